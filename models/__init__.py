"""Models of GRID: ``build_model(cfg) -> GridModel`` (see models/grid.py)."""
from models.backbones import BACKBONES, build_backbone
from models.config import ModelConfig
from models.grid import GridModel, make_eval_step, make_train_step


def build_model(cfg):
    """GridModel for cfg.model_name in GRID-BCE, GRID-PCE, GRID-RRL, BCE, PCE, RRL.
    Build it inside ``strategy.scope()`` when training with a tf.distribute strategy.
    model_name "MiLaN" gives a ``models.milan.MilanModel`` (hashing network, SPEC 8).
    ``cfg``: a run Config (adapted with ``ModelConfig.from_config``) or a ModelConfig."""
    if cfg.model_name == "MiLaN":
        from models.milan import MilanModel
        return MilanModel(cfg)
    return GridModel(cfg)


__all__ = ["BACKBONES", "GridModel", "ModelConfig", "build_backbone", "build_model",
           "make_eval_step", "make_train_step"]
