# The serving install of mlm-export: no torch, no transformers. Build from a checkout that holds the
# artifact to serve (made elsewhere with `mlm-export MODEL --int8 -o models/NAME`):
#
#   docker build -f deploy/serve.Dockerfile --build-arg ARTIFACT=models/antiberty -t mlm-serve .
#   docker run --rm -p 8080:8080 mlm-serve
#
# `docker stop` sends SIGTERM and kills after 10 s: the server finishes its accepted requests within
# --grace-period 8 and exits 0. Raise both (docker stop -t N) for long /score requests.
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 serve
WORKDIR /srv
COPY pyproject.toml README.md LICENSE ./
COPY mlm_export ./mlm_export
RUN pip install --no-cache-dir "./[cpu,serve]" && rm -rf ./mlm_export ./pyproject.toml

ARG ARTIFACT=models/antiberty
COPY ${ARTIFACT} /srv/artifact
# a corrupt or incomplete artifact fails the build, not the first request
RUN mlm-export verify --integrity /srv/artifact -q

USER serve
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"
CMD ["mlm-export", "serve", "/srv/artifact", "--host", "0.0.0.0", "--port", "8080", "--grace-period", "8"]
