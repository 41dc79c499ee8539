"""Weights files for the tests of pretrained starts (DESIGN §2.5)."""

import timm
import torch
from safetensors.torch import save_file


def trained_resnet(path) -> None:
    """A test_resnet weights file that looks trained: a fresh ResNet's last batch norm of
    each block has weight 0 (timm's zero_init_last), which would cut every gradient to
    adapters inside the blocks of a frozen backbone; trained statistics make eval mode
    matter."""
    torch.manual_seed(11)
    model = timm.create_model("test_resnet", in_chans=1, num_classes=0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
