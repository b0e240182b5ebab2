"""``python -m poolguard demo`` and ``python -m poolguard doctor``
(``poolguard/__main__.py`` dispatches to them)."""
