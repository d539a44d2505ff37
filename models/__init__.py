"""Models of GRID: ``build_model(cfg) -> GridModel`` (see models/grid.py)."""
from models.backbones import BACKBONES, build_backbone
from models.config import ModelConfig
from models.grid import GridModel, make_eval_step, make_train_step


def build_model(cfg):
    """GridModel for cfg.model_name in GRID-BCE, GRID-PCE, GRID-RRL, BCE, PCE, RRL.
    Build it inside ``strategy.scope()`` when training with a tf.distribute strategy.
    model_name "MiLaN" gives a ``models.milan.MilanModel`` (hashing network, SPEC 8); SAT, ELR
    and JoCoR a ``models.robust.RobustModel``.
    ``cfg``: a run Config (adapted with ``ModelConfig.from_config``) or a ModelConfig; the
    robust models take the run Config (their schedules read its epochs and training files)."""
    if cfg.model_name == "MiLaN":
        from models.milan import MilanModel
        return MilanModel(cfg)
    from models.robust import ROBUST_MODELS, RobustModel
    if cfg.model_name in ROBUST_MODELS:  # SAT, ELR, JoCoR (models/robust.py)
        return RobustModel(cfg)
    return GridModel(cfg)


def make_step(model, optimizer, cfg, strategy=None):
    """The compiled training step of ``model``: its own when it has one, else GRID's."""
    if hasattr(model, "make_train_step"):
        return model.make_train_step(optimizer, cfg, strategy)
    return make_train_step(model, optimizer, cfg, strategy=strategy)


def make_eval(model, cfg, strategy=None):
    """The compiled evaluation step of ``model``: its own when it has one, else GRID's."""
    if hasattr(model, "make_eval_step"):
        return model.make_eval_step(cfg, strategy)
    return make_eval_step(model, cfg, strategy=strategy)


__all__ = ["BACKBONES", "GridModel", "ModelConfig", "build_backbone", "build_model",
           "make_eval_step", "make_train_step", "make_step", "make_eval"]
