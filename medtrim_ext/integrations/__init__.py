"""Optional integrations with libraries users already train with. Each module needs its extra and
says so when it is missing; importing this package imports none of them.

- :mod:`medtrim_ext.integrations.pml`: :class:`~medtrim_ext.integrations.pml.MetaEntityMiner`, a
  pytorch-metric-learning miner (``pip install "medtrim_ext[pml]"``);
- :mod:`medtrim_ext.integrations.open_clip`: open_clip models as the training loop's dual encoder
  (``model.kind=open_clip``; ``pip install "medtrim_ext[open-clip]"``).
"""
