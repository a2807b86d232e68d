"""Policies behind one interface (see base.Policy), one module per method, loaded by name."""

from fastdp_ros.policies.base import (
    BuildRequest,
    Policy,
    load_policy,
    policies_with,
    policy_class,
    policy_entry,
    register_policy,
    registered_policies,
)
from fastdp_ros.policies.config import PolicyConfig, option
from fastdp_ros.policies.modeldir import load_model_dir, model_hash, read_config, save_model_dir
from fastdp_ros.policies.spec import ObservationError, PolicySpec, check_observation

__all__ = [
    "BuildRequest", "ObservationError", "Policy", "PolicyConfig", "PolicySpec", "check_observation",
    "load_model_dir", "load_policy", "model_hash", "option", "policies_with", "policy_class", "policy_entry",
    "read_config", "register_policy", "registered_policies", "save_model_dir",
]
