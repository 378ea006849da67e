"""What the system keeps in Redis: every key (``keys.py``) and every Lua script
(``scripts/``, one ``.lua`` file each, registered by name by ``scripts.py``).

The modules that use Redis build their keys and load their scripts from here, so
one place shows everything a deployed Redis holds and every step run inside it.
"""
