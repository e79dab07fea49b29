"""The vpcbus event contract.

Everything that crosses the bus is defined here and only here: the lifecycle events users
publish (:mod:`.events`, :mod:`.projects`), the per-service status the services publish
(:mod:`.status`), the error and dead-letter records (:mod:`.errors`), and the subject and
stream names (:mod:`.subjects`). Services import this package and never each other.
"""
