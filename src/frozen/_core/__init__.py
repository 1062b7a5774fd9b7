"""The core of frozen: a module's record and stand-ins, a frozen use, the walk over uses, Frozen, settling flags.

This face is the package's contract: siblings import these names from here, never a module inside.
"""

from .call import GuardedForward as GuardedForward
from .call import keeps_training_flag as keeps_training_flag
from .call import under_torch_func as under_torch_func
from .compiled import RecompileWarning as RecompileWarning
from .compiled import reserve_recompiles as reserve_recompiles
from .flips import who_flipped as who_flipped
from .optimizer_loads import guard_loads as guard_loads
from .precision import floating_tensors as floating_tensors
from .precision import lower_precision as lower_precision
from .precision import restore_precision as restore_precision
from .record import LOCK as LOCK
from .record import freeze_slot as freeze_slot
from .record import is_marked as is_marked
from .record import mark as mark
from .record import record_of as record_of
from .record import release_slot as release_slot
from .record import rows_of as rows_of
from .record import set_rows as set_rows
from .record import switched_off as switched_off
from .record import unmark as unmark
from .settle import settle as settle
from .settle import settle_flags as settle_flags
from .settle import settle_flips as settle_flips
from .snapshot import ModuleState as ModuleState
from .snapshot import TensorState as TensorState
from .snapshot import own_tensors as own_tensors
from .snapshot import same_tensor as same_tensor
from .snapshot import tensor_entry as tensor_entry
from .standins import ModuleRef as ModuleRef
from .standins import Passthrough as Passthrough
from .standins import StandIn as StandIn
from .standins import find as find
from .standins import install as install
from .standins import own_attribute as own_attribute
from .standins import remove as remove
from .standins import standing as standing
from .trainable import frozen_by_other_libraries as frozen_by_other_libraries
from .trainable import trainable_ids as trainable_ids
from .trainable import trainable_of as trainable_of
from .tree import ModuleUse as ModuleUse
from .tree import ParamUse as ParamUse
from .tree import iter_module_uses as iter_module_uses
from .tree import iter_param_uses as iter_param_uses
from .tree import join as join
from .tree import named_parameters as named_parameters
from .tree import param_uses_of as param_uses_of
from .view import View as View
from .wrapper import Frozen as Frozen

__all__ = [
    "Frozen",
    "GuardedForward",
    "LOCK",
    "ModuleRef",
    "ModuleState",
    "ModuleUse",
    "ParamUse",
    "Passthrough",
    "RecompileWarning",
    "StandIn",
    "TensorState",
    "find",
    "View",
    "floating_tensors",
    "freeze_slot",
    "frozen_by_other_libraries",
    "guard_loads",
    "install",
    "is_marked",
    "iter_module_uses",
    "iter_param_uses",
    "join",
    "keeps_training_flag",
    "lower_precision",
    "mark",
    "named_parameters",
    "own_attribute",
    "own_tensors",
    "param_uses_of",
    "record_of",
    "release_slot",
    "remove",
    "reserve_recompiles",
    "restore_precision",
    "rows_of",
    "same_tensor",
    "settle",
    "set_rows",
    "settle_flags",
    "settle_flips",
    "standing",
    "switched_off",
    "tensor_entry",
    "trainable_ids",
    "trainable_of",
    "under_torch_func",
    "unmark",
    "who_flipped",
]
