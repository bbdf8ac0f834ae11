import torch

from nfsd_server.scene.encoding import HashGridConfig, HashGridEncoding

PRIMES = (1, 2_654_435_761, 805_459_861)


def reference_encode(enc: HashGridEncoding, point: torch.Tensor) -> torch.Tensor:
    """One point, one corner at a time: the textbook Instant-NGP lookup."""
    out = []
    table = enc.embeddings.view(enc.config.n_levels, enc.table_size, -1)
    for level, res in enumerate(enc.resolutions.tolist()):
        x = point * res
        base = torch.clamp(torch.floor(x), max=res - 1)
        frac = x - base
        feat = torch.zeros(enc.config.features_per_level)
        for corner in range(8):
            bits = [(corner >> a) & 1 for a in range(3)]
            c = [int(base[a]) + bits[a] for a in range(3)]
            w = 1.0
            for a in range(3):
                w *= float(frac[a]) if bits[a] else 1 - float(frac[a])
            if (res + 1) ** 3 <= enc.table_size:
                idx = c[0] + (res + 1) * (c[1] + (res + 1) * c[2])
            else:
                idx = (c[0] * PRIMES[0] ^ c[1] * PRIMES[1] ^ c[2] * PRIMES[2]) % enc.table_size
            feat += w * table[level, idx]
        out.append(feat)
    return torch.cat(out)


def test_matches_brute_force_on_dense_and_hashed_levels():
    torch.manual_seed(0)
    enc = HashGridEncoding(HashGridConfig(n_levels=4, features_per_level=2, log2_table_size=10, base_resolution=4, max_resolution=64))
    assert 0 < enc.n_dense_levels < 4  # the test covers both kinds of level
    with torch.no_grad():
        enc.embeddings.uniform_(-1, 1)
    points = torch.rand(20, 3)
    points[0] = torch.tensor([0.0, 1.0, 0.5])  # on the boundary
    got = enc(points)
    expected = torch.stack([reference_encode(enc, p) for p in points])
    assert got.shape == (20, 8)
    assert torch.allclose(got, expected, atol=1e-5)


def test_gradients_reach_the_table_and_the_points():
    enc = HashGridEncoding(HashGridConfig(n_levels=3, log2_table_size=8, base_resolution=4, max_resolution=32))
    points = torch.rand(50, 3, requires_grad=True)
    enc(points).square().sum().backward()
    assert enc.embeddings.grad is not None and enc.embeddings.grad.abs().sum() > 0
    assert points.grad is not None and torch.isfinite(points.grad).all()


def saved_for_backward(fn):
    """(output, [saved tensors that are not parameters]) of fn() under autograd."""
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, saved


def test_saved_activations_are_int32_ids_and_float_weights_not_int64():
    config = HashGridConfig(n_levels=16, log2_table_size=19, base_resolution=16, max_resolution=2048)
    enc = HashGridEncoding(config)
    n_points = 4096
    out, saved = saved_for_backward(lambda: enc(torch.rand(n_points, 3)))
    params = {p.data_ptr() for p in enc.parameters()}
    activations = [t for t in saved if t.data_ptr() not in params]
    assert not [t for t in activations if t.dtype == torch.int64 and t.numel() >= n_points * 16 * 8]
    per_point_level = sum(t.numel() * t.element_size() for t in activations) / (n_points * 16)
    assert per_point_level <= 8 * 4 + 8 * 4  # int32 corner ids + float weights (was 8 × int64 + 8 × float + …)


def test_table_gradient_matches_plain_index_select():
    enc = HashGridEncoding(HashGridConfig(n_levels=4, log2_table_size=10, base_resolution=4, max_resolution=64))
    with torch.no_grad():
        enc.embeddings.uniform_(-1, 1)
    points = torch.rand(200, 3, generator=torch.Generator().manual_seed(0))
    weights_out = torch.randn(200, enc.output_dim, generator=torch.Generator().manual_seed(1))
    (enc(points) * weights_out).sum().backward()
    table = torch.nn.Parameter(enc.embeddings.detach().clone())
    expected = torch.stack([reference_encode_with(table, enc, p) for p in points])
    (expected * weights_out).sum().backward()
    assert torch.allclose(enc.embeddings.grad, table.grad, atol=1e-5)


def reference_encode_with(table, enc, point):
    original = enc.embeddings
    try:
        enc.embeddings = table  # reference_encode reads enc.embeddings
        return reference_encode(enc, point)
    finally:
        enc.embeddings = original
