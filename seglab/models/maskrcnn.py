"""Mask R-CNN (He et al., ICCV 2017), torchvision's implementation behind seglab's contract.

The first seglab model of task "instance": every object apart, not every pixel a class.
torchvision builds the network (maskrcnn_resnet50_fpn and its _v2 of Li et al. 2021,
"Benchmarking detection transfer learning with vision transformers"); seglab adds the
registry entry, the weights' task and everything around it (data, trainer, COCO AP, predict).

    model = create_model("maskrcnn", num_classes=6, backbone="resnet18", min_size=128)
    losses = model.train()(images, targets)   # {"loss_classifier": ..., "loss_mask": ..., ...}
    results = model.eval()(images)            # [{"boxes", "labels", "scores", "masks"}, ...]

images: (B, C, H, W) or a list of (C, H, W) float tensors in [0, 1], NOT normalised: the
model normalises and resizes them itself (GeneralizedRCNNTransform: shorter side to min_size,
longer at most max_size), as torchvision's Mask R-CNN does, so that its checkpoints give the
same outputs here. targets: one dict per image with "boxes" (N, 4) float x1y1x2y2 in pixels,
"labels" (N,) int64 in [1, num_classes) and "masks" (N, H, W) uint8.
Eval output per image: "boxes" (N, 4), "labels" (N,), "scores" (N,) and "masks" (N, 1, H, W)
mask probabilities at the input size (threshold 0.5 for binary masks).

num_classes counts the background as class 0, as torchvision does: COCO's 80 categories are
91 (its id space) and the shapes data's 5 objects are 6, the same number as its semantic
classes.txt. The submodules carry torchvision's names (transform, backbone, rpn, roi_heads),
so a torchvision state dict loads as it is.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import mask_rcnn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    RPNHead,
)
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from seglab.errors import SeglabError
from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model, register_variant

VERSIONS = ("v1", "v2")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
PRETRAINED = (None, "imagenet", "coco")
COCO_WEIGHTS = {
    "v1": mask_rcnn.MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
    "v2": mask_rcnn.MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
}


def _check_options(version: str, backbone: str, pretrained: str | None, num_classes: int) -> None:
    if version not in VERSIONS:
        raise SeglabError(f"maskrcnn version {version!r} is not one of: {', '.join(VERSIONS)}")
    if backbone not in BACKBONES:
        raise SeglabError(f"maskrcnn backbone {backbone!r} is not one of: {', '.join(BACKBONES)}")
    if pretrained not in PRETRAINED:
        raise SeglabError(f"maskrcnn pretrained {pretrained!r}: use null, imagenet or coco")
    if pretrained == "coco" and (backbone != "resnet50" or num_classes != 91):
        raise SeglabError(
            "maskrcnn pretrained: coco weights exist for backbone resnet50 with 91 classes; "
            "use pretrained: imagenet to fine-tune on other classes"
        )


def _anchor_generator(sizes, aspect_ratios) -> AnchorGenerator:
    """One anchor size per FPN level (P2..P6), every level with the same aspect ratios."""
    sizes = tuple(int(size) for size in sizes)
    if len(sizes) != 5:
        raise SeglabError(
            f"maskrcnn anchor_sizes {list(sizes)}: give 5 sizes, one per FPN level P2..P6"
        )
    ratios = tuple(float(ratio) for ratio in aspect_ratios)
    return AnchorGenerator(tuple((size,) for size in sizes), (ratios,) * len(sizes))


def _proposal_counts(pre_nms, post_nms) -> dict[str, int]:
    """torchvision's four RPN keyword arguments from [train, test] pairs."""
    counts = {}
    for name, pair in (("pre", pre_nms), ("post", post_nms)):
        if len(pair) != 2:
            raise SeglabError(f"maskrcnn rpn_{name}_nms_top_n {pair}: give [train, test]")
        counts[f"rpn_{name}_nms_top_n_train"], counts[f"rpn_{name}_nms_top_n_test"] = map(int, pair)
    return counts


@register_model(
    "maskrcnn",
    "Mask R-CNN, ResNet-50-FPN (He et al. 2017; torchvision maskrcnn_resnet50_fpn)",
    # The paper's BatchNorm is frozen (ImageNet statistics); torchvision's count is that model's.
    paper_options={"num_classes": 91, "frozen_bn": True},
    paper_params=44_401_393,
    small_options={"backbone": "resnet18", "width": 32, "min_size": 64, "max_size": 64},
)
class MaskRCNN(SegmentationModel):
    """Mask R-CNN with an FPN on a ResNet; see the module docstring for inputs and outputs.

    version: v1 (the paper, torchvision maskrcnn_resnet50_fpn) or v2 (maskrcnn_resnet50_fpn_v2:
        BatchNorm in the FPN and heads, a 4-conv box head, two RPN convs).
    backbone: resnet50 (the paper) or resnet18/34 (small, for CPUs and tests), resnet101.
    pretrained: None, "imagenet" (backbone) or "coco" (the whole torchvision model).
    trainable_layers: None is torchvision's rule (3 stages when pretrained, all 5 from scratch).
    frozen_bn: None is torchvision's rule (frozen statistics and affine with pretrained weights,
        as the paper; ordinary BatchNorm from scratch); v2 keeps BatchNorm unless frozen_bn.
    width: FPN and mask-head channels (torchvision's 256; the mask head is most of a CPU step,
        64 makes it 16 times cheaper).
    min_size, max_size: the resize inside the model (the paper's 800 / 1333).
    box_batch_size_per_image: sampled RoIs per image for the box and mask heads (paper 512).
    box_detections_per_img: at most this many detections per image (COCO's 100).
    anchor_sizes: one anchor side in pixels per pyramid level P2..P6 (torchvision's 32..512,
        for COCO's objects at 800 px); aspect_ratios: height/width of each level's anchors.
    rpn_batch_size_per_image: anchors sampled per image for the RPN loss (paper 256).
    rpn_pre_nms_top_n, rpn_post_nms_top_n: proposals kept per level before NMS and per image
        after it, [train, test] (torchvision's [2000, 1000] both; a scene of a few objects
        needs far fewer, and every test proposal costs a box-head pass).
    """

    task: ClassVar[str] = "instance"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        version: str = "v1",
        backbone: str = "resnet50",
        pretrained: str | None = None,
        trainable_layers: int | None = None,
        frozen_bn: bool | None = None,
        width: int = 256,
        min_size: int = 800,
        max_size: int = 1333,
        box_batch_size_per_image: int = 512,
        box_detections_per_img: int = 100,
        anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
        aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        rpn_batch_size_per_image: int = 256,
        rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000),
        rpn_post_nms_top_n: tuple[int, int] = (2000, 1000),
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise SeglabError(
                f"maskrcnn num_classes {num_classes}: it counts the background, so at least 2"
            )
        kwargs: dict[str, Any] = {
            "min_size": min_size,
            "max_size": max_size,
            "box_batch_size_per_image": box_batch_size_per_image,
            "box_detections_per_img": box_detections_per_img,
            "rpn_batch_size_per_image": rpn_batch_size_per_image,
            **_proposal_counts(rpn_pre_nms_top_n, rpn_post_nms_top_n),
        }
        anchors = _anchor_generator(anchor_sizes, aspect_ratios)
        # torchvision's MaskRCNN as maskrcnn_resnet50_fpn(_v2) builds it, on any ResNet.
        _check_options(version, backbone, pretrained, num_classes)
        is_trained = pretrained is not None
        if trainable_layers is None:
            trainable_layers = 3 if is_trained else 5
        if frozen_bn is None:
            frozen_bn = is_trained and version == "v1"
        norm = misc_ops.FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        weights = "DEFAULT" if pretrained == "imagenet" else None  # downloads on a user's machine
        body = getattr(resnet, backbone)(weights=weights, norm_layer=norm)
        fpn_norm = None if version == "v1" else nn.BatchNorm2d
        fpn = _resnet_fpn_extractor(body, trainable_layers, norm_layer=fpn_norm)
        if width != fpn.out_channels:  # the same pyramid, narrower
            stage2 = body.inplanes // 8  # layer1's output channels
            levels = [stage2 * 2**i for i in range(4)]
            fpn.fpn = FeaturePyramidNetwork(levels, width, LastLevelMaxPool(), norm_layer=fpn_norm)
            fpn.out_channels = width
            head_norm = None if version == "v1" else nn.BatchNorm2d
            kwargs["mask_head"] = mask_rcnn.MaskRCNNHeads(
                width, [width] * 4, 1, norm_layer=head_norm
            )
            kwargs["mask_predictor"] = mask_rcnn.MaskRCNNPredictor(width, width, num_classes)
            kwargs["box_predictor"] = FastRCNNPredictor(1024, num_classes)  # torchvision's own
        classes = None if "box_predictor" in kwargs else num_classes  # torchvision wants one
        if version == "v1":
            net = mask_rcnn.MaskRCNN(
                fpn, num_classes=classes, rpn_anchor_generator=anchors, **kwargs
            )
        else:
            channels = fpn.out_channels
            kwargs.setdefault(
                "mask_head",
                mask_rcnn.MaskRCNNHeads(channels, [256] * 4, 1, norm_layer=nn.BatchNorm2d),
            )
            net = mask_rcnn.MaskRCNN(
                fpn,
                num_classes=classes,
                rpn_anchor_generator=anchors,
                rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=2),
                box_head=FastRCNNConvFCHead(
                    (channels, 7, 7), [channels] * 4, [1024], norm_layer=nn.BatchNorm2d
                ),
                **kwargs,
            )
        if pretrained == "coco":
            net.load_state_dict(COCO_WEIGHTS[version].get_state_dict(progress=True))
        # torchvision's own attribute names: its state dicts load without renaming.
        self.transform, self.backbone, self.rpn, self.roi_heads = (
            net.transform,
            net.backbone,
            net.rpn,
            net.roi_heads,
        )
        if in_channels != 3:
            self._adapt_input(in_channels)

    def _adapt_input(self, in_channels: int) -> None:
        """First convolution for other than RGB: the mean RGB filter for every channel (keeps
        pretrained features meaningful), mean and std the RGB ones' average."""
        old = self.backbone.body.conv1
        conv = nn.Conv2d(in_channels, old.out_channels, 7, 2, 3, bias=False)
        with torch.no_grad():
            conv.weight.copy_(old.weight.mean(1, keepdim=True).expand_as(conv.weight))
        conv.weight.requires_grad_(old.weight.requires_grad)
        self.backbone.body.conv1 = conv
        mean = sum(self.transform.image_mean) / 3
        std = sum(self.transform.image_std) / 3
        self.transform.image_mean, self.transform.image_std = (
            [mean] * in_channels,
            [std] * (in_channels),
        )

    def forward(
        self, images: torch.Tensor | list[torch.Tensor], targets: list[dict] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Train mode: the loss dict (needs targets); eval mode: one result dict per image."""
        if self.training and targets is None:
            raise SeglabError("maskrcnn in train mode needs targets (boxes, labels, masks)")
        images = list(images)
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        batch, targets = self.transform(images, targets)
        features = self.backbone(batch.tensors)
        proposals, proposal_losses = self.rpn(batch, features, targets)
        detections, detector_losses = self.roi_heads(
            features, proposals, batch.image_sizes, targets
        )
        if self.training:
            return {**detector_losses, **proposal_losses}
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

    def forward_coarse(self, x: torch.Tensor) -> torch.Tensor:
        raise SeglabError("maskrcnn is an instance model: it has no per-pixel logits")


register_variant(
    "maskrcnn_v2",
    "maskrcnn",
    "Mask R-CNN v2, ResNet-50-FPN (Li et al. 2021; torchvision maskrcnn_resnet50_fpn_v2)",
    paper_options={"num_classes": 91},
    paper_params=46_359_409,
    version="v2",
)
