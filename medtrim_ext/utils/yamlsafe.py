"""A PyYAML safe loader that refuses aliases (``*name``).

Aliases let a few hundred bytes of YAML expand to gigabytes (the "billion laughs" bomb) and a
self-referencing alias (``&a [*a]``) to a structure that recursion chokes on. Neither the
packaged configs nor the extraction ontology use them, so refusing them costs nothing; the
YAMLError raised here is turned into a ``ValueError`` naming the file by each caller.
"""

from __future__ import annotations


def no_alias_safe_loader():
    """A fresh ``yaml.SafeLoader`` subclass whose composer raises on any alias."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None,
                    f"YAML aliases (*{event.anchor}) are not allowed here: write the value out "
                    f"in full (aliases can expand without bound or refer to themselves)",
                    event.start_mark)
            return super().compose_node(parent, index)

    return NoAliasLoader
