"""StreamPETRHead: PETR 3D position embedding (LID depths), the memory queue with its
motion-aware propagation, query denoising and the temporal decoder.

Memory (per batch slot): `memory_len` entries of embedding, reference point (metres, in
the frame of the current frame after `pre_update`), velocity, age in seconds (float32; the
workload hands in time differences computed in float64 on the host), and the relative
ego pose. `pre_update` moves the queue into the current LIDAR frame and zeroes the slots
whose `prev_exists` is 0; `post_update` pushes the top-`topk_proposals` queries of the last
layer to the front (detached) and moves the queue to the global frame. The queue is kept
per mode (train/eval) so an evaluation in the middle of training leaves training's alone.
Boxes: 10-d code (cx, cy, cz, log w, log l, log h, sin, cos, vx, vy), centres de-normalised
to metres over pc_range.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from workloads.streampetr.config import StreamPETRConfig
from workloads.streampetr.layers import (
    MLN,
    SELayerLinear,
    inverse_sigmoid,
    nerf_encoding,
    pos2posemb1d,
    pos2posemb3d,
)
from workloads.streampetr.transformer import TemporalDecoder


@dataclasses.dataclass
class Memory:
    embedding: torch.Tensor  # (B, M, C)
    ref: torch.Tensor  # (B, M, 3) metres
    velo: torch.Tensor  # (B, M, 2)
    age: torch.Tensor  # (B, M, 1) seconds since the entry was written
    egopose: torch.Tensor  # (B, M, 4, 4) entry frame -> current frame


def _transform(points: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """(B, M, 3) points by (B, 4, 4)."""
    return points @ mat[:, :3, :3].transpose(1, 2) + mat[:, None, :3, 3]


class StreamPETRHead(nn.Module):
    def __init__(self, cfg: StreamPETRConfig) -> None:
        super().__init__()
        c, d = cfg.embed_dims, cfg.depth_num
        self.cfg, self.num_classes = cfg, len(cfg.class_names)
        self.reference_points = nn.Embedding(cfg.num_query, 3)
        self.pseudo_reference_points = nn.Embedding(cfg.num_propagated, 3)
        nn.init.uniform_(self.reference_points.weight, 0, 1)
        nn.init.uniform_(self.pseudo_reference_points.weight, 0, 1)
        self.pseudo_reference_points.weight.requires_grad_(False)
        self.position_encoder = nn.Sequential(nn.Linear(d * 3, 4 * c), nn.ReLU(), nn.Linear(4 * c, c))
        self.memory_embed = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))
        self.spatial_alignment = MLN(8, c)
        self.featurized_pe = SELayerLinear(c)
        self.query_embedding = nn.Sequential(nn.Linear(c * 3 // 2, c), nn.ReLU(), nn.Linear(c, c))
        self.time_embedding = nn.Sequential(nn.Linear(c, c), nn.LayerNorm(c))
        self.ego_pose_pe = MLN(180, c)
        self.ego_pose_memory = MLN(180, c)
        self.decoder = TemporalDecoder(cfg.num_layers, c, cfg.num_heads, cfg.ffn_dims, cfg.dropout, cfg.with_cp)
        # One cls and one reg branch shared by every decoder layer (the original's
        # ModuleList repeats the same module).
        self.cls_branch = nn.Sequential(nn.Linear(c, c), nn.LayerNorm(c), nn.ReLU(), nn.Linear(c, c),
                                        nn.LayerNorm(c), nn.ReLU(), nn.Linear(c, self.num_classes))
        self.reg_branch = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c), nn.ReLU(), nn.Linear(c, 10))
        nn.init.constant_(self.cls_branch[-1].bias, -4.595)  # bias_init_with_prob(0.01)
        index = torch.arange(d, dtype=torch.float32)
        bin_size = (cfg.position_range[3] - cfg.depth_start) / (d * (1 + d))
        self.register_buffer("coords_d", cfg.depth_start + bin_size * index * (index + 1), persistent=False)
        self.register_buffer("pc_range", torch.tensor(cfg.pc_range), persistent=False)
        self.register_buffer("position_range", torch.tensor(cfg.position_range), persistent=False)
        self._memory: dict[bool, Memory] = {}

    # -- memory --
    def reset_memory(self) -> None:
        self._memory.clear()

    def memory_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The queues (per mode) as plain tensors, for a checkpoint."""
        return {("train" if mode else "eval"): dataclasses.asdict(mem) for mode, mem in self._memory.items()}

    def load_memory_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Put saved queues back on this head's device (a queue on another device would be
        taken for a stale one and reset by `_pre_update`)."""
        dev = self.coords_d.device
        self._memory = {name == "train": Memory(**{k: v.to(dev) for k, v in fields.items()})
                        for name, fields in state.items()}

    def _pre_update(self, prev_exists: torch.Tensor, dt: torch.Tensor, ego_pose_inv: torch.Tensor) -> Memory:
        cfg, b = self.cfg, prev_exists.shape[0]
        mem = self._memory.get(self.training)
        x = prev_exists.view(b, 1, 1)
        if mem is None or mem.embedding.shape[0] != b or mem.embedding.device != prev_exists.device:
            z = prev_exists.new_zeros
            mem = Memory(z(b, cfg.memory_len, cfg.embed_dims), z(b, cfg.memory_len, 3), z(b, cfg.memory_len, 2),
                         z(b, cfg.memory_len, 1), z(b, cfg.memory_len, 4, 4))
        else:
            n = cfg.memory_len
            mem = Memory(mem.embedding[:, :n] * x, _transform(mem.ref[:, :n], ego_pose_inv) * x,
                         mem.velo[:, :n] * x, (mem.age[:, :n] + dt.view(b, 1, 1)) * x,
                         (ego_pose_inv[:, None] @ mem.egopose[:, :n]) * x[..., None])
        p = cfg.num_propagated
        pseudo = self.pseudo_reference_points.weight * (self.pc_range[3:] - self.pc_range[:3]) + self.pc_range[:3]
        eye = torch.eye(4, device=x.device, dtype=x.dtype)
        ref = torch.cat([mem.ref[:, :p] + (1 - x) * pseudo, mem.ref[:, p:]], 1)
        pose = torch.cat([mem.egopose[:, :p] + (1 - x)[..., None] * eye, mem.egopose[:, p:]], 1)
        return dataclasses.replace(mem, ref=ref, egopose=pose)

    def _post_update(self, mem: Memory, ego_pose: torch.Tensor, cls: torch.Tensor, boxes: torch.Tensor,
                     feats: torch.Tensor) -> None:
        k = self.cfg.topk_proposals
        score = cls.detach().sigmoid().max(-1).values
        idx = score.topk(k, dim=1).indices

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.detach().gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))

        b = cls.shape[0]
        eye = torch.eye(4, device=cls.device, dtype=mem.egopose.dtype).expand(b, k, 4, 4)
        ref = torch.cat([pick(boxes[..., :3]), mem.ref], 1)
        self._memory[self.training] = Memory(
            torch.cat([pick(feats), mem.embedding], 1).detach(), _transform(ref, ego_pose).detach(),
            torch.cat([pick(boxes[..., 8:10]), mem.velo], 1).detach(),
            torch.cat([mem.age.new_zeros(b, k, 1), mem.age], 1).detach(),
            (ego_pose[:, None] @ torch.cat([eye, mem.egopose], 1)).detach())

    # -- embeddings --
    def position_embedding(self, feats_shape: tuple[int, ...], img_hw: tuple[int, int], img2lidar: torch.Tensor,
                           intrinsics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N*H*W, C) PETR position embedding, (B, N*H*W, 8) cone of each token and
        (B, N*H*W, 2, 3) its ray's nearest and farthest depth points in metres."""
        b, n, _, h, w = feats_shape
        d = self.coords_d.shape[0]
        dev = img2lidar.device
        us = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) * (img_hw[1] / w)
        vs = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) * (img_hw[0] / h)
        v, u = torch.meshgrid(vs, us, indexing="ij")
        depth = self.coords_d.view(1, 1, d)
        pix = torch.stack([u[..., None] * depth, v[..., None] * depth, depth.expand(h, w, d),
                           torch.ones(h, w, d, device=dev)], -1)  # (H, W, D, 4)
        pts = torch.einsum("bnij,hwdj->bnhwdi", img2lidar[..., :3, :], pix)
        ray_ends = pts[..., [0, -1], :].reshape(b, n * h * w, 2, 3)
        lo, hi = self.position_range[:3], self.position_range[3:]
        pts = ((pts - lo) / (hi - lo)).reshape(b, n * h * w, d * 3)
        pos = self.position_encoder(inverse_sigmoid(pts))
        focal = intrinsics[..., [0, 1], [0, 1]].abs() / 1e3  # (B, N, 2)
        focal = focal[:, :, None].expand(b, n, h * w, 2).reshape(b, n * h * w, 2)
        mid = max(0, d - 30)  # the original's depth bin 34 of 64 (coords3d[..., -90:-87])
        cone = torch.cat([focal, pts[..., -3:], pts[..., mid * 3:mid * 3 + 3]], -1)
        return pos, cone, ray_ends

    def ray_distance_prior(self, ref: torch.Tensor, ray_ends: torch.Tensor) -> torch.Tensor:
        """(B, 1, Q, T) cross-attention logit bias -(d / sigma)^2, d = the BEV (x, y) distance
        in metres from each query's reference point to each token's camera ray (the segment
        between its nearest and farthest depth points), sigma = `geometry_prior_m`. Not in
        the original: a smoke-only aid (see the config)."""
        lo, hi = self.pc_range[:3], self.pc_range[3:]
        point = (ref * (hi - lo) + lo)[..., None, :2]  # (B, Q, 1, 2)
        near, far = ray_ends[:, None, :, 0, :2], ray_ends[:, None, :, 1, :2]  # (B, 1, T, 2)
        along = far - near
        t = (((point - near) * along).sum(-1) / (along * along).sum(-1).clamp(min=1e-6)).clamp(0, 1)
        dist = (point - (near + t[..., None] * along)).norm(dim=-1)
        return (-(dist / self.cfg.geometry_prior_m) ** 2)[:, None]

    def _denoising(self, b: int, gt_boxes: list[torch.Tensor] | None, gt_labels: list[torch.Tensor] | None
                   ) -> tuple[torch.Tensor, torch.Tensor | None, dict | None]:
        """(B, pad + num_query, 3) normalised reference points, the self-attention block mask
        over (pad + queries + propagated) x (pad + queries + memory), and the DN targets."""
        cfg = self.cfg
        ref = self.reference_points.weight
        if not (self.training and cfg.dn_groups > 0 and gt_boxes is not None):
            return ref[None].expand(b, -1, -1), None, None
        counts = [len(t) for t in gt_boxes]
        single = max(counts) if counts else 0
        groups = cfg.dn_groups
        pad = single * groups
        dev = ref.device
        labels = torch.cat(gt_labels).long().repeat(groups)
        boxes = torch.cat(gt_boxes).repeat(groups, 1)
        batch_idx = torch.cat([torch.full((n,), i, dtype=torch.long, device=dev) for i, n in enumerate(counts)])
        batch_idx = batch_idx.repeat(groups)
        centre = boxes[:, :3].clone()
        noise = torch.rand_like(centre) * 2 - 1
        centre = centre + noise * boxes[:, 3:6] / 2 * cfg.dn_noise_scale
        centre = ((centre - self.pc_range[:3]) / (self.pc_range[3:] - self.pc_range[:3])).clamp(0, 1)
        labels = torch.where(noise.norm(dim=1) > cfg.dn_split, torch.full_like(labels, self.num_classes), labels)
        slot = torch.cat([torch.arange(n, device=dev) for n in counts]) if counts else torch.zeros(0, dtype=torch.long)
        slot = torch.cat([slot + single * g for g in range(groups)])
        padded = torch.cat([ref.new_zeros(pad, 3), ref], 0)[None].repeat(b, 1, 1)
        padded[batch_idx, slot] = centre
        q = pad + cfg.num_query + cfg.num_propagated
        blocked = torch.zeros(q, pad + cfg.num_query + cfg.memory_len, dtype=torch.bool)
        blocked[pad:, :pad] = True  # matching queries cannot see the DN queries
        for g in range(groups):  # DN groups cannot see each other
            blocked[single * g:single * (g + 1), :single * g] = True
            blocked[single * g:single * (g + 1), single * (g + 1):pad] = True
        known = dict(labels=labels, boxes=boxes, batch_idx=batch_idx, slot=slot, pad=pad)
        return padded, blocked.to(dev), known

    def _temporal_alignment(self, mem: Memory, query_pos: torch.Tensor, tgt: torch.Tensor, ref: torch.Tensor
                            ) -> tuple[torch.Tensor, ...]:
        cfg, c = self.cfg, self.cfg.embed_dims
        lo, hi = self.pc_range[:3], self.pc_range[3:]
        temp_ref = (mem.ref - lo) / (hi - lo)
        temp_pos = self.query_embedding(pos2posemb3d(temp_ref, c // 2))
        b, q = ref.shape[:2]
        eye = torch.eye(4, device=ref.device).expand(b, q, 4, 4)
        motion = nerf_encoding(torch.cat([torch.zeros_like(ref), eye[..., :3, :].flatten(-2)], -1))
        tgt = self.ego_pose_memory(tgt, motion)
        query_pos = self.ego_pose_pe(query_pos, motion)
        mem_motion = nerf_encoding(torch.cat([mem.velo, mem.age, mem.egopose[..., :3, :].flatten(-2)], -1))
        temp_pos = self.ego_pose_pe(temp_pos, mem_motion)
        temp_memory = self.ego_pose_memory(mem.embedding, mem_motion)
        query_pos = query_pos + self.time_embedding(pos2posemb1d(torch.zeros_like(ref[..., :1]), c))
        temp_pos = temp_pos + self.time_embedding(pos2posemb1d(mem.age, c))
        p = cfg.num_propagated
        tgt = torch.cat([tgt, temp_memory[:, :p]], 1)
        query_pos = torch.cat([query_pos, temp_pos[:, :p]], 1)
        ref = torch.cat([ref, temp_ref[:, :p]], 1)
        return tgt, query_pos, ref, temp_memory[:, p:], temp_pos[:, p:]

    def forward(self, feats: torch.Tensor, img_hw: tuple[int, int], data: dict[str, torch.Tensor],
                gt_boxes: list[torch.Tensor] | None = None, gt_labels: list[torch.Tensor] | None = None) -> dict:
        """feats (B, N, C, H, W); data: img2lidar, intrinsics, ego_pose, ego_pose_inv,
        prev_exists (B,), dt (B,) float32 seconds."""
        b = feats.shape[0]
        mem = self._pre_update(data["prev_exists"], data["dt"], data["ego_pose_inv"])
        tokens = feats.permute(0, 1, 3, 4, 2).reshape(b, -1, feats.shape[2])
        pos, cone, ray_ends = self.position_embedding(tuple(feats.shape), img_hw, data["img2lidar"],
                                                      data["intrinsics"])
        tokens = self.spatial_alignment(self.memory_embed(tokens), cone)
        pos = self.featurized_pe(pos, tokens)
        ref, blocked, known = self._denoising(b, gt_boxes, gt_labels)
        query_pos = self.query_embedding(pos2posemb3d(ref, self.cfg.embed_dims // 2))
        tgt, query_pos, ref, temp_memory, temp_pos = self._temporal_alignment(
            mem, query_pos, torch.zeros_like(query_pos), ref)
        prior = self.ray_distance_prior(ref, ray_ends) if self.cfg.geometry_prior_m > 0 else None
        outs = torch.nan_to_num(self.decoder(tgt, query_pos, tokens, pos, temp_memory, temp_pos, blocked, prior))
        cls = self.cls_branch(outs)
        reg = self.reg_branch(outs)
        centre = (reg[..., :3] + inverse_sigmoid(ref)).sigmoid()
        centre = centre * (self.pc_range[3:] - self.pc_range[:3]) + self.pc_range[:3]
        boxes = torch.cat([centre, reg[..., 3:]], -1)
        pad = known["pad"] if known else 0
        self._post_update(mem, data["ego_pose"], cls[-1, :, pad:], boxes[-1, :, pad:], outs[-1, :, pad:])
        out = dict(cls=cls[:, :, pad:], boxes=boxes[:, :, pad:])
        if known is not None:
            out.update(dn_cls=cls[:, :, :pad], dn_boxes=boxes[:, :, :pad], known=known)
        return out
