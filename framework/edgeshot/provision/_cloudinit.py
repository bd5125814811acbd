"""Cloud-init user data: prepare a fresh Debian host for the configure step (Ansible).

Deliberately small and stable. User data is readable by anything on the host that
reaches the cloud's metadata service, so it holds no secret (tokens and keys arrive
over SSH in the configure step). And a change of user data replaces the server on
Hetzner and DigitalOcean, so it holds only what never changes for a server: its
name, network, edgepoint and roles. Ports, slot subnets and addresses are in the
stack's `inventory` output instead.
"""

from __future__ import annotations

import json

import yaml

from edgeshot.plan import Plan, ServerPlan

from ._rules import role

METADATA_ADDRESS = "169.254.169.254"

# Pods live in slots behind this host (forwarded traffic): they must never reach the
# metadata service, where the cloud keeps user data and, on AWS, instance credentials.
GUARD_NFT = f"""\
table inet edgeshot_guard
delete table inet edgeshot_guard
table inet edgeshot_guard {{
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        ip daddr {METADATA_ADDRESS} drop
    }}
}}
"""

GUARD_UNIT = """\
[Unit]
Description=edgeshot: keep pods away from the cloud metadata service
Before=network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f /etc/edgeshot/guard.nft
ExecStop=/usr/sbin/nft delete table inet edgeshot_guard

[Install]
WantedBy=multi-user.target
"""

SSHD = """\
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks: the files read as they will be written."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def user_data(plan: Plan, server: ServerPlan) -> str:
    """`#cloud-config` for `server`: hostname, packages the configure step needs, key-only
    SSH, and on servers with slots IP forwarding plus the metadata guard."""
    slots = role(server) != "controller"
    facts = {"network": plan.network, "server": server.name, "edgepoint": server.edgepoint,
             "roles": list(server.roles), "provider": plan.provider}
    files = [
        {"path": "/etc/edgeshot/server.json", "permissions": "0644",
         "content": json.dumps(facts, indent=1) + "\n"},
        {"path": "/etc/ssh/sshd_config.d/90-edgeshot.conf", "permissions": "0644",
         "content": SSHD},
    ]
    commands: list[list[str]] = [["systemctl", "reload", "ssh"],
                                 ["mkdir", "-p", "/var/lib/edgeshot"]]
    if slots:
        files += [
            {"path": "/etc/sysctl.d/90-edgeshot.conf", "permissions": "0644",
             "content": "net.ipv4.ip_forward = 1\n"},
            {"path": "/etc/edgeshot/guard.nft", "permissions": "0644", "content": GUARD_NFT},
            {"path": "/etc/systemd/system/edgeshot-guard.service", "permissions": "0644",
             "content": GUARD_UNIT},
        ]
        commands = [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "edgeshot-guard.service"],
            ["sysctl", "--system"],
            *commands,
            ["mkdir", "-p", "/run/netns"],
        ]
    config = {
        "hostname": server.name,
        "preserve_hostname": False,
        "manage_etc_hosts": True,
        "package_update": True,
        "packages": ["python3", "nftables", "iproute2", "ca-certificates"],
        "write_files": files,
        "runcmd": commands,
    }
    head = (f"#cloud-config\n# edgeshot {plan.network}: {server.name} ({', '.join(server.roles)}). "
            "No secrets here: the configure step brings them over SSH.\n")
    return head + yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                            width=100)
