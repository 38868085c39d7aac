"""Multi-query associative recall (MQAR), supervised: the capacity benchmark of ``lifelong mqar``.

``data`` generates the task in the standard form of Arora et al. 2023 (Zoology): key-value pairs,
then queries of earlier keys at power-law distributed gaps; ``model`` wraps the project's memory
mixers (embedding -> blocks -> LM head); ``train`` fits one model and writes ``results.json``;
``report`` turns a folder of runs into figures and a table (``lifelong mqar-report``).
"""
