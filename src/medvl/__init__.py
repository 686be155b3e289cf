"""medvl: pretrain, adapt, evaluate and serve medical vision-language foundation models."""

__version__ = "0.1.0"
