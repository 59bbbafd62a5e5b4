"""kdlab: knowledge distillation with the losses of Kim et al. (IJCAI 2021), done exactly."""

__version__ = "0.1.0"
