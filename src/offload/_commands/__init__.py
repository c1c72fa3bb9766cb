"""The commands of ``python -m offload``: ``demo`` and ``soak``.

They use offload's public API only (``import offload``), as an application would.
"""
