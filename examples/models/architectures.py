# SPDX-License-Identifier: MIT
"""The two example networks of the seed, written out in plain PyTorch (Debian's python3-torch has no
torchvision, and no trained weights can be downloaded here).

- DeepLabV3Plus: DeepLabV3+ with a ResNet-50 backbone (bottleneck blocks 3-4-6-3, output stride 16 with a
  dilated last stage), ASPP (1x1, three dilated 3x3 at rates 6/12/18, image pooling) and the V3+ decoder
  (low-level features from stage 1, 48-channel projection, two 3x3 convs). The head regresses one depth
  channel (metres, 0..max_depth through a sigmoid), as the seed uses it on NYU Depth V2. Input is NHWC
  (1x512x512x3 like the seed); the NHWC->NCHW transpose and the NCHW->NHWC transpose of the output are part
  of the graph.
- YOLOv8n: the Ultralytics v8 "n" scale (depth 0.33, width 0.25, max channels 1024): Conv-BN-SiLU, C2f
  blocks, SPPF, PAN-FPN neck and the decoupled detect head with DFL (reg_max 16). The box decoding (DFL
  softmax expectation, anchor points, dist2bbox, stride scaling) is in the graph, as in Ultralytics' ONNX
  export: output [1, 4 + nc, anchors] with (cx, cy, w, h) in input pixels followed by class probabilities.

`width` scales every channel count (1.0 is the real model; the tests use a narrow variant to stay fast).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _ch(c, width, minimum=4):
    return max(minimum, int(round(c * width)))


# ---------------------------------------------------------------------------------------------- DeepLabV3+
class ConvBNReLU(nn.Sequential):
    def __init__(self, cin, cout, k=1, stride=1, dilation=1, relu=True):
        pad = dilation * (k - 1) // 2
        layers = [nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=False))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, dilation=1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = ConvBNReLU(cin, planes, 1)
        self.conv2 = ConvBNReLU(planes, planes, 3, stride=stride, dilation=dilation)
        self.conv3 = ConvBNReLU(planes, cout, 1, relu=False)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = ConvBNReLU(cin, cout, 1, stride=stride, relu=False)

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + idt)


class ResNet50(nn.Module):
    """ResNet-50 (v1.5: stride on the 3x3 conv) with output stride 16: stage 4 keeps stride 1, dilation 2."""

    def __init__(self, width=1.0):
        super().__init__()
        stem = _ch(64, width)
        self.stem = nn.Sequential(ConvBNReLU(3, stem, 7, stride=2), nn.MaxPool2d(3, 2, 1))
        cin = stem
        stages = []
        for planes, blocks, stride, dilation in ((64, 3, 1, 1), (128, 4, 2, 1), (256, 6, 2, 1), (512, 3, 1, 2)):
            p = _ch(planes, width)
            layers = []
            for i in range(blocks):
                layers.append(Bottleneck(cin, p, stride if i == 0 else 1, dilation))
                cin = p * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.low_channels = _ch(64, width) * 4
        self.out_channels = cin

    def forward(self, x):
        x = self.stem(x)
        low = self.layer1(x)
        x = self.layer4(self.layer3(self.layer2(low)))
        return low, x


class ASPP(nn.Module):
    def __init__(self, cin, cout, rates=(6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList([ConvBNReLU(cin, cout, 1)] +
                                      [ConvBNReLU(cin, cout, 3, dilation=r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(cin, cout, 1))
        self.project = ConvBNReLU(cout * (len(rates) + 2), cout, 1)

    def forward(self, x):
        outs = [b(x) for b in self.branches]
        # Upsampling the 1x1 pooled map is a broadcast; exported as a bilinear Resize like the reference code.
        # Upsampling by constant scale factors (not target sizes) keeps Shape/Slice ops out of the exported graph.
        outs.append(F.interpolate(self.pool(x), scale_factor=float(x.shape[-1]), mode="bilinear",
                                  align_corners=False))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Plus(nn.Module):
    def __init__(self, width=1.0, out_channels=1, max_depth=10.0):
        super().__init__()
        self.backbone = ResNet50(width)
        c = _ch(256, width)
        self.aspp = ASPP(self.backbone.out_channels, c)
        self.low_proj = ConvBNReLU(self.backbone.low_channels, _ch(48, width), 1)
        self.decoder = nn.Sequential(ConvBNReLU(c + _ch(48, width), c, 3), ConvBNReLU(c, c, 3))
        self.head = nn.Conv2d(c, out_channels, 1)
        self.max_depth = max_depth

    def forward(self, x_nhwc):
        x = x_nhwc.permute(0, 3, 1, 2)
        low, high = self.backbone(x)
        high = self.aspp(high)
        high = F.interpolate(high, scale_factor=float(low.shape[-1] // high.shape[-1]), mode="bilinear",
                             align_corners=False)
        y = self.decoder(torch.cat([high, self.low_proj(low)], dim=1))
        y = F.interpolate(self.head(y), scale_factor=float(x.shape[-1] // y.shape[-1]), mode="bilinear",
                          align_corners=False)
        y = torch.sigmoid(y) * self.max_depth
        return y.permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------- YOLOv8n
class ConvBNSiLU(nn.Module):
    def __init__(self, cin, cout, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


class YoloBottleneck(nn.Module):
    def __init__(self, c, shortcut):
        super().__init__()
        self.cv1 = ConvBNSiLU(c, c, 3)
        self.cv2 = ConvBNSiLU(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, cin, cout, n, shortcut):
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBNSiLU(cin, 2 * self.c, 1)
        self.cv2 = ConvBNSiLU((2 + n) * self.c, cout, 1)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        ys = list(self.cv1(x).split((self.c, self.c), dim=1))
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, dim=1))


class SPPF(nn.Module):
    def __init__(self, cin, cout, k=5):
        super().__init__()
        c = cin // 2
        self.cv1 = ConvBNSiLU(cin, c, 1)
        self.cv2 = ConvBNSiLU(c * 4, cout, 1)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, dim=1))


class Detect(nn.Module):
    """Decoupled head: per level a box branch (4 * reg_max DFL logits) and a class branch (nc logits)."""

    def __init__(self, nc, chs, strides, reg_max=16):
        super().__init__()
        self.nc, self.reg_max, self.strides = nc, reg_max, strides
        c2 = max(16, chs[0] // 4, reg_max * 4)
        c3 = max(chs[0], min(nc, 100))
        self.box = nn.ModuleList(nn.Sequential(ConvBNSiLU(c, c2, 3), ConvBNSiLU(c2, c2, 3),
                                               nn.Conv2d(c2, 4 * reg_max, 1)) for c in chs)
        self.cls = nn.ModuleList(nn.Sequential(ConvBNSiLU(c, c3, 3), ConvBNSiLU(c3, c3, 3),
                                               nn.Conv2d(c3, nc, 1)) for c in chs)
        # DFL: the expectation of the 16-bin distribution as a fixed 1x1 conv with weights 0..15.
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)

    def forward(self, feats):
        shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        no, n = 4 * self.reg_max + self.nc, int(feats[0].shape[0])
        x = torch.cat([torch.cat([b(f), c(f)], dim=1).view(n, no, h * w)
                       for f, b, c, (h, w) in zip(feats, self.box, self.cls, shapes)], dim=2)
        box, cls = x.split((4 * self.reg_max, self.nc), dim=1)
        a = sum(h * w for h, w in shapes)
        dist = self.dfl(box.view(n, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(n, 4, a)
        # Anchor points (cell centres) and strides are constants of the static input size.
        pts, strd = [], []
        for (h, w), s in zip(shapes, self.strides):
            sy, sx = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5,
                                    torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
            pts.append(torch.stack((sx, sy), 0).view(2, -1))
            strd.append(torch.full((1, h * w), float(s)))
        anchors = torch.cat(pts, 1).unsqueeze(0)
        stride = torch.cat(strd, 1).unsqueeze(0)
        lt, rb = dist.split((2, 2), dim=1)
        x1y1, x2y2 = anchors - lt, anchors + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim=1) * stride
        return torch.cat((dbox, torch.sigmoid(cls)), dim=1)


class YOLOv8(nn.Module):
    def __init__(self, nc=80, depth=0.33, width=0.25, max_ch=1024):
        super().__init__()

        def ch(c):
            return int(math.ceil(min(c, max_ch) * width / 8) * 8)

        def n(k):
            return max(round(k * depth), 1)

        self.b0 = ConvBNSiLU(3, ch(64), 3, 2)          # P1/2
        self.b1 = ConvBNSiLU(ch(64), ch(128), 3, 2)     # P2/4
        self.b2 = C2f(ch(128), ch(128), n(3), True)
        self.b3 = ConvBNSiLU(ch(128), ch(256), 3, 2)    # P3/8
        self.b4 = C2f(ch(256), ch(256), n(6), True)
        self.b5 = ConvBNSiLU(ch(256), ch(512), 3, 2)    # P4/16
        self.b6 = C2f(ch(512), ch(512), n(6), True)
        self.b7 = ConvBNSiLU(ch(512), ch(1024), 3, 2)   # P5/32
        self.b8 = C2f(ch(1024), ch(1024), n(3), True)
        self.b9 = SPPF(ch(1024), ch(1024))
        # PAN-FPN neck
        self.h12 = C2f(ch(1024) + ch(512), ch(512), n(3), False)
        self.h15 = C2f(ch(512) + ch(256), ch(256), n(3), False)
        self.h16 = ConvBNSiLU(ch(256), ch(256), 3, 2)
        self.h18 = C2f(ch(256) + ch(512), ch(512), n(3), False)
        self.h19 = ConvBNSiLU(ch(512), ch(512), 3, 2)
        self.h21 = C2f(ch(512) + ch(1024), ch(1024), n(3), False)
        self.detect = Detect(nc, (ch(256), ch(512), ch(1024)), (8, 16, 32))

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        up = F.interpolate(p5, scale_factor=2.0, mode="nearest")
        n4 = self.h12(torch.cat([up, p4], 1))
        up = F.interpolate(n4, scale_factor=2.0, mode="nearest")
        n3 = self.h15(torch.cat([up, p3], 1))
        n4 = self.h18(torch.cat([self.h16(n3), n4], 1))
        n5 = self.h21(torch.cat([self.h19(n4), p5], 1))
        return self.detect([n3, n4, n5])
