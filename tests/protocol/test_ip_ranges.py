"""The address checks behind URL previews: the default denylist, the
allowlist's exceptions, and IPv4 addresses written as IPv6."""

from __future__ import annotations

import ipaddress
import re

import pytest

from ranvier.protocol.ip_ranges import (
    DEFAULT_URL_PREVIEW_DENYLIST,
    AddressPolicy,
    effective_address,
    parse_network,
)

DEFAULT = AddressPolicy.from_strings(DEFAULT_URL_PREVIEW_DENYLIST)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.9",
        "0.0.0.0",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "198.18.0.1",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.251",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",
        "ff02::1",
        "2001:db8::1",
        "64:ff9b::a00:1",
        "2002:a00:1::1",
        "2001:0:4136:e378::1",
        "100::1",
    ],
)
def test_the_default_denylist_refuses_addresses_off_the_public_internet(address: str) -> None:
    assert not DEFAULT.allows(address)


@pytest.mark.parametrize(
    "address",
    [
        "1.1.1.1",
        "8.8.8.8",
        "93.184.215.14",
        "172.32.0.1",
        "100.128.0.1",
        "192.169.0.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001::200e",
    ],
)
def test_the_default_denylist_allows_public_addresses(address: str) -> None:
    assert DEFAULT.allows(address)


@pytest.mark.parametrize(
    ("mapped", "public"),
    [
        ("::ffff:127.0.0.1", False),
        ("::ffff:7f00:1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("::ffff:8.8.8.8", True),
        ("::127.0.0.1", False),
        ("::10.0.0.1", False),
        ("::8.8.8.8", True),
    ],
)
def test_ipv4_written_as_ipv6_is_judged_as_the_ipv4_address(mapped: str, public: bool) -> None:
    assert DEFAULT.allows(mapped) is public


@pytest.mark.parametrize("written", ["8.8.8.8", "::ffff:8.8.8.8", "::ffff:808:808", "::8.8.8.8"])
def test_an_operators_ipv4_entry_covers_the_ipv6_forms_of_its_addresses(written: str) -> None:
    policy = AddressPolicy.from_strings(["8.8.8.0/24"])
    assert not policy.allows(written)
    assert policy.allows("8.8.4.4")


def test_mapped_addresses_are_unwrapped_and_others_are_kept() -> None:
    assert effective_address("::ffff:192.168.0.1") == ipaddress.ip_address("192.168.0.1")
    assert effective_address("::1") == ipaddress.ip_address("::1")
    assert effective_address("::") == ipaddress.ip_address("::")
    assert effective_address("2001:db8::1") == ipaddress.ip_address("2001:db8::1")
    assert effective_address("fe80::1%2") == ipaddress.ip_address("fe80::1")


def test_the_allowlist_opens_one_host_inside_a_denied_range() -> None:
    policy = AddressPolicy.from_strings(DEFAULT_URL_PREVIEW_DENYLIST, ["127.0.0.1", "fd00::/16"])
    assert policy.allows("127.0.0.1")
    assert policy.allows("::ffff:127.0.0.1")
    assert not policy.allows("127.0.0.2")
    assert policy.allows("fd00::5")
    assert not policy.allows("fd01::5")
    assert not policy.allows("10.0.0.1")


def test_an_empty_denylist_allows_everything_and_a_full_one_nothing() -> None:
    open_policy = AddressPolicy.from_strings([])
    assert open_policy.allows("127.0.0.1")
    assert open_policy.allows("::1")
    closed = AddressPolicy.from_strings(["0.0.0.0/0", "::/0"])
    assert not closed.allows("8.8.8.8")
    assert not closed.allows("2606:4700:4700::1111")


def test_what_is_not_an_address_is_refused() -> None:
    assert not DEFAULT.allows("example.com")
    assert not DEFAULT.allows("")
    assert not AddressPolicy.from_strings([]).allows("localhost")


def test_bad_entries_are_named() -> None:
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33'")):
        parse_network("10.0.0.0/33")
    with pytest.raises(ValueError, match=re.escape("'example.com'")):
        AddressPolicy.from_strings(["example.com"])
    assert parse_network("10.1.2.3/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_network(" ::1 ") == ipaddress.ip_network("::1/128")
