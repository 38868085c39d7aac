"""The Hydra configs, shipped as package data (``lifelong.configs``); Hydra reads them through
``pkg://lifelong.configs``. Groups: ``memory/``, ``stream/``, ``agent/``; ``config.yaml`` is the default."""
