"""A module that cannot be imported: config loading must report the ImportError text."""

import agentserver_no_such_dependency  # noqa: F401
