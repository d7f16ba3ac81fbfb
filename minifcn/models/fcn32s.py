"""FCN-32s: score at stride 32, then one 32x bilinear-initialised upsampling."""

from .fcn import FCN


class FCN32s(FCN):
    def __init__(self, *args, **config):  # FCN's arguments, positional as before or by name
        super().__init__(*args, **config)
        self.upscore = self.upsampler(64, 32, final=True)
        self.offset = self.final_offset("score_fr", "upscore")  # 19 with pad 100

    def forward(self, x):
        x, size = self.prepare(x)
        score_fr, _ = self.body(x)
        return self.upsample_to(self.upscore, score_fr, self.offset, size)
