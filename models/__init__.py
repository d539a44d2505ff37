"""Models: ``build_model(cfg)`` builds the model of ``cfg.model_name`` (models/registry.py names
every one; models/base.py is the contract they keep with the training loop).

Importing this package is light (no TensorFlow): config.py reads ``models.registry`` at start-up.
"""


def build_model(cfg, **kwargs):
    """The model of ``cfg.model_name`` (a models.base.Model). ``cfg``: a run Config (its model
    part is taken, see models/config.py) or a ModelConfig. Build it inside ``strategy.scope()``
    when training with a tf.distribute strategy. ``kwargs`` go to the model's constructor."""
    from models import registry
    from models.config import ModelConfig

    mc = ModelConfig.from_config(cfg)
    return registry.get(mc.model_name).load()(mc, **kwargs)
