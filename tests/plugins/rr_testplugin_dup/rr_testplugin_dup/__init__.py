from rr_testplugin import Count as _Base


class Count(_Base):
    """A second 'count' from another distribution."""
