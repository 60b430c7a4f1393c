"""deepem.heap: freed memory kept inside the scope (no page faults for a block allocated again)
until release_freed_memory() gives it back; DEEPEM_KEEP_FREED_MEMORY=0 switches it off."""
import resource

import pytest
import torch

from deepem import heap

BLOCK = 64 * 2 ** 20  # above glibc's largest mmap threshold (32 MiB)
PAGES = BLOCK // resource.getpagesize()


def faults_of_a_block():
    """Minor page faults of allocating, writing and freeing one BLOCK."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(BLOCK // 4)
    block.fill_(1.0)
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def transparent_huge_pages_always():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


def test_freed_blocks_are_reused_inside_and_given_back_outside():
    if not heap.available():
        pytest.skip("not glibc's malloc: reuse_freed_memory does nothing here")
    with heap.reuse_freed_memory():
        # the heap grows, to a few blocks: posix_memalign asks a little more than a block, and
        # small allocations may split a freed block from the free space after it
        torch.empty(4 * BLOCK // 4).fill_(1.0)
        with heap.reuse_freed_memory():  # nested: the same setting
            assert faults_of_a_block() < PAGES // 10
        assert faults_of_a_block() < PAGES // 10
        assert faults_of_a_block() < PAGES // 10
    assert heap._depth == 0
    heap.release_freed_memory()
    if not transparent_huge_pages_always():  # huge pages fault 512x less: nothing to count
        assert faults_of_a_block() > PAGES // 2  # given back: faulted in again, page by page


def test_the_scope_is_left_cleanly_on_an_error():
    with pytest.raises(RuntimeError, match="inside"):
        with heap.reuse_freed_memory():
            raise RuntimeError("inside")
    assert heap._depth == 0


def test_the_environment_switches_it_off():
    import subprocess
    import sys

    code = "from deepem import heap; print(heap.available())"
    env = dict(__import__("os").environ, DEEPEM_KEEP_FREED_MEMORY="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
