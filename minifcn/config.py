"""The settings of a training run, checked when they are made: a run never starts that cannot train."""

import dataclasses
import math

from . import models
from .data.transforms import PREPROCESS
from .models.shapes import check_size

# The class-weighted losses by name: a class of pixel share f weighs about f ** -power (train.class_weights).
# "balanced" is Farabet's (each class the same total weight); the roots go part of the way on the log scale.
CLASS_WEIGHT_POWER = {"balanced": 1.0, "sqrt": 0.5, "fourth-root": 0.25, "eighth-root": 0.125}

MAX_CLASSES = 255  # label maps are uint8 and 255 marks void: classes 0 ... 254
MAX_SIDE = 4096  # pixels: the largest --image-size or --crop a setting may ask for
MAX_BATCH = 4096  # images (or crops) in one step
MAX_CROPS_PER_IMAGE = 256


@dataclasses.dataclass
class TrainConfig:
    data: str
    out: str = "runs/fcn"
    dataset: str = "voc"  # or "siftflow" (then num_classes=33)
    image_size: int = None  # siftflow: resize every image to this square size
    model: str = "fcn8s"
    width: float = 0.125
    fc_width: int = 512
    input_mode: str = "pad100"
    upsampling: str = "paper"  # final upsampler fixed bilinear, intermediate ones learned; "learned"; "fixed"
    learnable: bool = None  # the older switch: True = upsampling "learned", False = "fixed"
    freeze_body: bool = False  # FCN-32s-fixed as in the paper: only the score layers learn
    preprocess: str = "imagenet"  # input normalisation the weights expect ("caffe" for the authors' weights)
    fc6_kernel: int = 7  # fc6's window on pool5: 7 as in VGG16; a classifier pre-trained on 32k-px crops needs k
    num_classes: int = 21
    epochs: int = 10
    batch_size: int = 8
    accum_steps: int = 1
    lr: float = 0.01
    optimizer: str = "sgd"  # the paper's SGD with momentum, or "adam" (AdamW; lr about 1e-3)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_policy: str = "poly"  # or "fixed"
    warmup_steps: int = 0  # the rate ramps up linearly over these first steps (keeps from-scratch ReLUs alive)
    loss_reduction: str = "mean"  # "mean" over valid pixels, or "sum" (the paper's unnormalised loss)
    class_weights: str = None  # a key of CLASS_WEIGHT_POWER: each class's loss weighted by its pixel share ** -power
    crop: int = None
    scale: tuple = (0.75, 1.25)
    train_split: str = "train"
    val_split: str = "val"
    train_subset: int = None
    val_subset: int = None
    init: str = None  # a checkpoint (.npz) or PyTorch file (.pth: VGG16 or FCN) whose weights start this model
    seed: int = 0
    checkpoint_every: int = 50  # steps between checkpoints (and at every epoch end)
    val_every: int = 1  # epochs between validation passes (0: never during training)

    def __post_init__(self):
        """Refuse, naming the setting, any value that would make a run train nothing or fail later."""
        def bad(name, need):
            raise ValueError(f"{name.replace('_', '-')} must be {need}, got {getattr(self, name)!r}")

        self.scale = tuple(self.scale)  # JSON gives a list back
        for name in ("epochs", "batch_size", "accum_steps", "checkpoint_every", "num_classes", "fc_width",
                     "fc6_kernel"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        for name in ("crop", "image_size", "train_subset", "val_subset"):
            if getattr(self, name) is not None and (not _is_int(getattr(self, name)) or getattr(self, name) < 1):
                bad(name, "an integer >= 1 (or unset)")
        for name in ("crop", "image_size"):
            if getattr(self, name) is not None and getattr(self, name) > MAX_SIDE:
                bad(name, f"at most {MAX_SIDE} pixels")
        if self.num_classes > MAX_CLASSES:
            bad("num_classes", f"at most {MAX_CLASSES} (label maps are 8-bit and 255 marks void)")
        if self.batch_size > MAX_BATCH:
            bad("batch_size", f"at most {MAX_BATCH} images")
        for name in ("warmup_steps", "val_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                bad(name, "an integer >= 0")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            bad("lr", "a finite number > 0")
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and self.width > 0):
            bad("width", "a finite number > 0")
        if not 0 <= self.momentum < 1 or not self.weight_decay >= 0:
            raise ValueError(f"momentum must be in [0, 1) and weight-decay >= 0, got {self.momentum}, "
                             f"{self.weight_decay}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] < math.inf:
            bad("scale", "a pair 0 < low <= high")
        choices = {"dataset": ("voc", "siftflow"), "model": tuple(models.MODELS), "optimizer": ("sgd", "adam"),
                   "lr_policy": ("poly", "fixed"), "loss_reduction": ("mean", "sum"),
                   "input_mode": models.fcn.INPUT_MODES, "upsampling": models.fcn.UPSAMPLING,
                   "preprocess": PREPROCESS, "class_weights": (None, *CLASS_WEIGHT_POWER)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                bad(name, f"one of {', '.join(map(str, allowed))}")
        for name in ("learnable", "freeze_body"):
            if getattr(self, name) not in ((None, True, False) if name == "learnable" else (True, False)):
                bad(name, "true or false")
        for name in ("momentum", "weight_decay"):
            if not (isinstance(getattr(self, name), (int, float)) and math.isfinite(getattr(self, name))):
                bad(name, "a finite number")
        check_size(models.shapes.model_shapes(self.model, **self.model_config()))

    def model_config(self):
        return dict(num_classes=self.num_classes, width=self.width, fc_width=self.fc_width,
                    input_mode=self.input_mode, learnable=self.learnable, upsampling=self.upsampling,
                    preprocess=self.preprocess, fc6_kernel=self.fc6_kernel, seed=self.seed)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


PRETRAIN_DATASETS = ("voc", "siftflow", "tiny-imagenet")


@dataclasses.dataclass
class PretrainConfig:
    """The classifier stage of the paper's recipe (minifcn.pretrain): a VGGClassifier trained either on
    crops of the segmentation training images, each labelled with the class covering most of it, or on
    the photos of a classification set (``dataset="tiny-imagenet"``: ImageNet's photos at 64 x 64)."""
    data: str
    out: str = "runs/pretrain"
    dataset: str = "voc"
    image_size: int = None  # siftflow: resize every image to this square size first
    num_classes: int = 21
    width: float = 0.125
    fc_width: int = 512
    crop: int = 96  # flatten head: 32 times an odd number, fc6 then becomes a (crop/32) x (crop/32) convolution
    scale: tuple = (1.0, 1.0)  # images are resized by a factor drawn from this range before cropping
    crops_per_image: int = 4
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3  # with linear warm-up and poly decay
    warmup_steps: int = 100
    weight_decay: float = 5e-4
    train_split: str = "train"
    val_split: str = "val"
    preprocess: str = "imagenet"
    seed: int = 0
    batchnorm: bool = False  # BatchNorm2d after every convolution (folded away when the FCN is built)
    head: str = "flatten"  # or "average": fc layers at each pool5 pixel, scores averaged (any input size)
    dropout: float = 0.5  # of fc6's and fc7's outputs, as in VGG
    pad: int = 4  # photos: reflect-pad by this much, then crop back at a random offset
    train_crop: int = None  # photos, average head: train on random crops this big, validate on whole photos
    optimizer: str = "adam"  # or "sgd" (with momentum)
    momentum: float = 0.9
    checkpoint_every: int = 500  # steps; the end of every epoch is saved as well

    def __post_init__(self):
        self.scale = tuple(self.scale)  # JSON gives a list back
        for name in ("num_classes", "fc_width", "crops_per_image", "epochs", "batch_size", "checkpoint_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("pad", "warmup_steps"):
            if not _is_int(getattr(self, name)) or not 0 <= getattr(self, name) <= (64 if name == "pad" else 10 ** 9):
                raise ValueError(f"{name.replace('_', '-')} must be an integer >= 0 (pad at most 64), got "
                                 f"{getattr(self, name)!r}")
        for name, most in (("crops_per_image", MAX_CROPS_PER_IMAGE), ("batch_size", MAX_BATCH)):
            if getattr(self, name) > most:  # crops are held in memory until a batch is full
                raise ValueError(f"{name.replace('_', '-')} must be at most {most}, got {getattr(self, name)}")
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"width must be a finite number > 0, got {self.width!r}")
        if self.num_classes > MAX_CLASSES or (self.image_size is not None and not
                                              (_is_int(self.image_size) and 1 <= self.image_size <= MAX_SIDE)):
            raise ValueError(f"num-classes must be at most {MAX_CLASSES} and image-size 1 ... {MAX_SIDE}, got "
                             f"{self.num_classes!r}, {self.image_size!r}")
        if self.head not in models.vgg.HEADS or not isinstance(self.batchnorm, bool):
            raise ValueError(f"head must be one of {models.vgg.HEADS} and batchnorm true or false, got "
                             f"{self.head!r}, {self.batchnorm!r}")
        if self.head == "flatten" and not (_is_int(self.crop) and self.crop % 32 == 0 and (self.crop // 32) % 2 == 1):
            raise ValueError(f"crop must be 32 times an odd number (32, 96, 160, 224: fc6's window is then "
                             f"centred on a pool5 pixel), got {self.crop!r}; or use --head average")
        if not (_is_int(self.crop) and self.crop % 32 == 0 and self.crop >= 32):
            raise ValueError(f"crop must be a multiple of 32 (five 2x2 pools), got {self.crop!r}")
        for name in ("lr", "momentum", "weight_decay", "dropout"):
            if not (isinstance(getattr(self, name), (int, float)) and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name.replace('_', '-')} must be a finite number, got {getattr(self, name)!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0):
            raise ValueError(f"lr must be > 0, momentum in [0, 1) and weight-decay >= 0, got {self.lr}, "
                             f"{self.momentum}, {self.weight_decay}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] < math.inf:
            raise ValueError(f"scale must be a pair 0 < low <= high, got {self.scale!r}")
        if self.dataset not in PRETRAIN_DATASETS or self.preprocess not in PREPROCESS or \
                self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"dataset must be one of {', '.join(PRETRAIN_DATASETS)}, preprocess one of "
                             f"{PREPROCESS} and optimizer adam or sgd, got {self.dataset!r}, {self.preprocess!r}, "
                             f"{self.optimizer!r}")
        if self.train_crop is not None and not (self.dataset == "tiny-imagenet" and self.head == "average" and
                                                _is_int(self.train_crop) and 32 <= self.train_crop <= self.crop):
            raise ValueError(f"train-crop needs --dataset tiny-imagenet, --head average (any input size) and a "
                             f"size from 32 to crop ({self.crop}), got {self.train_crop!r}")
        if self.crop > MAX_SIDE:
            raise ValueError(f"crop must be at most {MAX_SIDE} pixels, got {self.crop}")
        check_size(models.shapes.classifier_shapes(self.num_classes, self.width, self.fc_width, self.crop,
                                                   self.head, self.batchnorm))

    @property
    def fc6_kernel(self):
        return self.crop // 32 if self.head == "flatten" else 1
