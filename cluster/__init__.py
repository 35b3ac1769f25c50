"""The composition root: the ``officeray`` CLI, the local runtime, the ``ray job submit`` entrypoints
and the cluster configs.

Importing this package keeps a purely local Ray instance on 127.0.0.1 (see
:func:`cluster.prepare.prefer_loopback`); a process that joins a cluster (``RAY_ADDRESS`` set, as under
``ray job submit``) is left alone.
"""

from cluster.prepare import prefer_loopback

prefer_loopback()
