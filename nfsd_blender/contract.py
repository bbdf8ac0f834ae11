"""The job contract (``nfsd_contract``): the copy vendored into the add-on zip, or in a source checkout the
package the backend install puts on the path. The add-on reads every shared value and the job's field list
from here; nothing of it is typed in the add-on again."""

try:
    from .nfsd_contract import *  # noqa: F403  (scripts/build_addon.py vendors it beside this file)
except ModuleNotFoundError as error:
    if error.name != f"{__package__}.nfsd_contract":
        raise
    from nfsd_contract import *  # noqa: F403
