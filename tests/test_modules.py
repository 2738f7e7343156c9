"""The three CSF-Net modules in isolation."""

import pytest
import torch

from csfnet.nn import CReToNeXt, CSwitch, DFuse


def test_cswitch_splits_one_projection_into_the_partition():
    module = CSwitch(32, (64, 128, 256))
    assert module.conv.out_channels == 448  # paper 3.1: one shared 1x1 conv to sum(partition)
    branches = module(torch.randn(2, 32, 10, 12))
    assert [b.shape for b in branches] == [torch.Size([2, c, 10, 12]) for c in (64, 128, 256)]


@pytest.mark.parametrize("partition", [(), (16, 0), (-8,)])
def test_cswitch_rejects_bad_partitions(partition):
    with pytest.raises(ValueError, match="partition"):
        CSwitch(8, partition)


def test_dfuse_aligns_mixed_resolutions_and_channels_to_the_reference():
    fuse = DFuse([16, 8, 24])  # last = reference
    x_hi, x_same, ref = torch.randn(1, 16, 40, 40), torch.randn(1, 8, 20, 20), torch.randn(1, 24, 20, 20)
    out = fuse([x_hi, x_same, ref])
    assert out.shape == ref.shape
    assert all(isinstance(p, torch.nn.Conv2d) for p in fuse.proj)  # both differ in channels from the reference
    # nearest resize + 1x1 projection + sum, computed by hand
    expected = ref + fuse.proj[0](x_hi[..., ::2, ::2]) + fuse.proj[1](x_same)
    torch.testing.assert_close(out, expected)


def test_dfuse_passes_matching_channels_through_and_upsamples_low_resolution():
    fuse = DFuse([8, 8])
    low, ref = torch.randn(1, 8, 5, 5), torch.randn(1, 8, 10, 10)
    assert isinstance(fuse.proj[0], torch.nn.Identity)
    torch.testing.assert_close(fuse([low, ref]), ref + low.repeat_interleave(2, -1).repeat_interleave(2, -2))


def test_dfuse_picks_cswitch_branches_by_index():
    switch = CSwitch(4, (6, 10))
    fuse = DFuse([10, 10], idx=[1])
    branches = switch(torch.randn(1, 4, 8, 8))
    ref = torch.randn(1, 10, 8, 8)
    torch.testing.assert_close(fuse([branches, ref]), ref + branches[1])


@pytest.mark.parametrize("n", [1, 3])
def test_cretonext_shapes_and_gradients_reach_every_block(n):
    block = CReToNeXt(24, 32, n)
    out = block(torch.randn(2, 24, 16, 16))
    assert out.shape == (2, 32, 16, 16)
    assert block.fuse.conv.in_channels == 16 + n * 16  # shortcut + every block's output, concatenated
    out.square().mean().backward()
    for i, b in enumerate(block.blocks):
        grads = [p.grad for p in b.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), f"block {i} gets no gradient"
