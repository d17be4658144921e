"""xenshim's calls driven directly (ctypes, in a worker thread) against hv in this process.

What xenpaging alone would not show: the 112 bytes `xc_domain_getinfolist` writes, the
answer of `xc_map_foreign_pages` for a gfn that is not paging (Linux fails those at once),
and the target in KiB through xenstore.
"""

from __future__ import annotations

import ctypes
import errno
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
from xen_helpers import Shim, fill, guest, page, rig

from protocol import P2MType
from stack import xenpaging

pytestmark = pytest.mark.timeout(120)

GUARD = 0xA5


def _lib(shim: Shim) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(shim.lib_dir / "libxenshim.so"), use_errno=True)
    lib.xc_interface_open.restype = ctypes.c_void_p
    lib.xc_interface_open.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
    lib.xc_interface_close.argtypes = [ctypes.c_void_p]
    lib.xc_mem_paging_enable.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)
    ]  # fmt: skip
    lib.xc_mem_paging_disable.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.xc_domain_getinfolist.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint, ctypes.c_void_p
    ]  # fmt: skip
    lib.xc_map_foreign_pages.restype = ctypes.c_void_p
    lib.xc_map_foreign_pages.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.POINTER(ctypes.c_ulong), ctypes.c_int
    ]  # fmt: skip
    lib.xs_open.restype = ctypes.c_void_p
    lib.xs_open.argtypes = [ctypes.c_ulong]
    lib.xs_read.restype = ctypes.c_void_p
    lib.xs_read.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint)
    ]  # fmt: skip
    lib.xs_close.argtypes = [ctypes.c_void_p]
    return lib


async def test_domain_info_target_and_maps(
    tmp_path: Path, shim: Shim, monkeypatch: pytest.MonkeyPatch
) -> None:
    libc = ctypes.CDLL(None)
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    lib = _lib(shim)
    with trio.fail_after(60):
        async with rig(tmp_path, shim, nr_gfns=64, vcpus=3, target=40) as r, guest(r) as g:
            monkeypatch.setenv("XENSHIM_RUN_DIR", str(r.run_dir))
            await fill(g, range(64), 3)
            xch = lib.xc_interface_open(None, None, 0)
            xsh = lib.xs_open(0)
            port = ctypes.c_uint32()
            assert await trio.to_thread.run_sync(lib.xc_mem_paging_enable, xch, 1, port) == 0
            assert port.value == 1 and r.status()["pager"]["attached"]

            # getinfolist: exactly Xen 4.17's 112 bytes, never one more
            buf = (ctypes.c_uint8 * 160)(*([GUARD] * 160))
            assert await trio.to_thread.run_sync(lib.xc_domain_getinfolist, xch, 1, 1, buf) == 1
            raw = bytes(buf)
            assert raw[112:] == bytes([GUARD]) * 48
            assert int.from_bytes(raw[0:2], "little") == 1  # domain
            assert int.from_bytes(raw[8:16], "little") == 64  # tot_pages
            assert int.from_bytes(raw[16:24], "little") == 64  # max_pages
            assert int.from_bytes(raw[40:48], "little") == 0  # paged_pages
            assert int.from_bytes(raw[64:68], "little") == 3  # nr_online_vcpus
            assert int.from_bytes(raw[68:72], "little") == 2  # max_vcpu_id

            # the target, in KiB, as xenstore holds it
            path = b"/local/domain/1/memory/target-tot_pages"
            n = ctypes.c_uint()
            val = lib.xs_read(xsh, 0, path, ctypes.byref(n))
            assert ctypes.string_at(val, n.value) == b"160"  # 40 pages of 4 KiB
            libc.free(val)

            def map_one(gfn: int) -> tuple[bytes | None, int]:
                arr = (ctypes.c_ulong * 1)(gfn)
                p = lib.xc_map_foreign_pages(xch, 1, 1, arr, 1)  # PROT_READ
                if not p:
                    return None, ctypes.get_errno()
                data = ctypes.string_at(p, 4096)
                libc.munmap(p, 4096)
                return data, 0

            assert await trio.to_thread.run_sync(map_one, 5) == (page(5, 1), 0)
            # ballooned out: not a paging gfn, so no retry (Linux answers at once)
            await g.call("decrease_reservation", gfns=[6])
            assert await trio.to_thread.run_sync(map_one, 6) == (None, errno.EINVAL)
            # broken: the contents are gone
            assert r.dom.nominate([7]) == [0] and r.dom.evict([7]) == [0]
            assert r.dom.mark_broken([7]) == [0]
            assert r.dom.p2m.type(7) == P2MType.broken
            assert await trio.to_thread.run_sync(map_one, 7) == (None, errno.EIO)
            # a paged gfn is retried until present: a populate (FOREIGN) goes on the ring
            assert r.dom.nominate([8]) == [0] and r.dom.evict([8]) == [0]
            async with trio.open_nursery() as nursery:
                got: list[tuple[bytes | None, int]] = []

                async def mapper() -> None:
                    got.append(await trio.to_thread.run_sync(map_one, 8))

                nursery.start_soon(mapper)
                await r.until(lambda: r.dom.p2m.type(8) == P2MType.paging_in_start, "populate")
                assert got == []  # still retrying
                assert r.dom.prep([8], [page(8, 3)]) == [0]  # as a pager would: a frame again
            assert got == [(page(8, 3), 0)]
            await trio.to_thread.run_sync(lib.xc_interface_close, xch)
            lib.xs_close(xsh)


def test_every_symbol_xenpaging_imports_is_exported_at_its_version(shim: Shim) -> None:
    """The binary's Xen imports (name@version, from its dynamic symbol table) are exactly
    what the shim defines; the four sonames it needs all resolve to the shim."""
    nm = shutil.which("nm")
    readelf = shutil.which("readelf")
    if nm is None or readelf is None:
        pytest.skip("binutils (nm, readelf) not installed")

    def symbols(*args: str) -> set[str]:
        out = subprocess.run([nm, "-D", *args], capture_output=True, text=True, check=True)
        return {line.split()[-1] for line in out.stdout.splitlines() if line.strip()}

    wanted = {
        s for s in symbols("--undefined-only", str(shim.binary)) if "@VERS_" in s
    }  # fmt: skip
    defined = {
        s.replace("@@", "@") for s in symbols("--defined-only", str(shim.lib_dir / "libxenshim.so"))
    }
    assert len(wanted) == 33  # 12 xc_, 8 xenevtchn_, 10 xs_, 3 xtl_
    assert wanted <= defined, sorted(wanted - defined)
    needed = subprocess.run(
        [readelf, "-d", str(shim.binary)], capture_output=True, text=True, check=True
    ).stdout
    for soname in xenpaging.SONAMES:
        assert f"[{soname}]" in needed
        assert (shim.lib_dir / soname).resolve() == (shim.lib_dir / "libxenshim.so").resolve()
