#!/usr/bin/python
"""Ansible module: install a packed appshot into an edgeshot agent's store, verified.

Runs with the interpreter that has edgeshot installed (the edge_agent role's
virtual environment); the work is edgeshot.configure.appshot_install's, which
Fabric's SFTP push uses too.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: edgeshot_appshot
short_description: Install a packed appshot into an edgeshot agent's store, verified
description:
  - Unpacks a packed appshot (.tar.gz or .tar.zst) into C(<state_dir>/appshots/<name>) only
    after its signature and every checksum verify against the keys the server trusts.
  - An appshot already installed is verified again; a damaged one is replaced from the tarball.
options:
  name:
    description: The appshot's name in the store.
    type: str
    required: true
  tarball:
    description: The packed appshot on the server.
    type: path
    required: true
  state_dir:
    description: The agent's state directory.
    type: path
    default: /var/lib/edgeshot
author: edgeshot
"""

RETURN = r"""
appshot:
  description: What the store now holds (name, app, version, kind, signer, files).
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "tarball": {"type": "path", "required": True},
            "state_dir": {"type": "path", "default": "/var/lib/edgeshot"},
        },
        supports_check_mode=True,
    )
    try:
        from edgeshot.configure import appshot_install
    except ImportError as exc:
        module.fail_json(msg=f"edgeshot is not installed for {module._name}'s interpreter: {exc}")
    p = module.params
    try:
        result = appshot_install.install(p["tarball"], p["name"], p["state_dir"],
                                         check=module.check_mode)
    except appshot_install.InstallError as exc:
        module.fail_json(msg=str(exc), appshot={"name": p["name"]})
    module.exit_json(changed=result.changed, appshot=result.summary())


if __name__ == "__main__":
    main()
