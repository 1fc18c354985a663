"""Every transport's bus runs the same conformance suite."""

from alkpubsub.testing import CoreConformance


class TestCoreConformance(CoreConformance):
    pass
