#!/usr/bin/python
"""Ansible module: record which servers this run could not configure, for the controller.

Runs with the interpreter that has edgeshot installed (the controller's virtual
environment); the work is edgeshot.control.exclusions's, whose file the controller
re-reads at every tick: an edgepoint with a server in it is not routed.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: edgeshot_exclusions
short_description: Keep the edgepoints of servers a run could not configure out of routing
description:
  - Writes the controller's exclusions file (edgeshot.control.exclusions) from what this
    run judged; servers the run did not judge (a limited run) keep their earlier entry.
options:
  path:
    description: The exclusions file the controller reads (its C(excluded_file)).
    type: path
    required: true
  servers:
    description: Every server this run judged, name to edgepoint.
    type: dict
    required: true
  configured:
    description: The servers this run configured completely.
    type: list
    elements: str
    required: true
  missing:
    description: The servers without an address in the inventory.
    type: list
    elements: str
    default: []
author: edgeshot
"""

RETURN = r"""
excluded:
  description: Edgepoint to why it is kept out of routing.
  returned: success
  type: dict
"""

from pathlib import Path  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "servers": {"type": "dict", "required": True},
            "configured": {"type": "list", "elements": "str", "required": True},
            "missing": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    try:
        from edgeshot.control import exclusions as X
    except ImportError as exc:
        module.fail_json(msg=f"edgeshot is not installed for {module._name}'s interpreter: {exc}")
    p = module.params
    old: X.Exclusions | None = None  # None: no usable file, write one
    try:
        if Path(p["path"]).exists():
            old = X.read(p["path"])
    except X.ExclusionsError as exc:  # replaced by what this run says
        module.warn(f"{exc}: replacing it")
    new = X.merge(old or X.Exclusions(), {str(k): str(v) for k, v in p["servers"].items()},
                  p["configured"], p["missing"])
    changed = new != old
    try:
        if changed and not module.check_mode:
            X.write(p["path"], new)
    except OSError as exc:
        module.fail_json(msg=f"{p['path']}: {exc}")
    module.exit_json(changed=changed, excluded=new.edgepoints())


if __name__ == "__main__":
    main()
