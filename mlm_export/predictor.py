class OnnxMaskFiller: pass
