"""The names `mmcv.ops` (mmcv 2.1) exposes, by the submodule that defines them.

The shim (mmcv_ops_shim.py) builds `mmcv.ops` and each `mmcv.ops.<submodule>` from this
table, so every `from mmcv.ops[.<sub>] import NAME` that works against the compiled mmcv
also resolves here: to a portable op where ops.py has one, to a placeholder otherwise
(which raises NotImplementedError naming the op when called). Only names are listed: they
are the interface that configs and model code import. A name missing here is an
ImportError, like a name the real mmcv.ops lacks.
"""
from __future__ import annotations

# submodule of mmcv.ops -> the public names it defines (those the package re-exports, plus
# the few that model code imports from the submodule directly: merge_cells for NAS-FPN).
CATALOG: dict[str, tuple[str, ...]] = {
    "active_rotated_filter": ("active_rotated_filter",),
    "assign_score_withk": ("assign_score_withk",),
    "ball_query": ("ball_query",),
    "bbox": ("bbox_overlaps",),
    "bezier_align": ("BezierAlign", "bezier_align"),
    "bias_act": ("bias_act",),
    "border_align": ("BorderAlign", "border_align"),
    "box_iou_quadri": ("box_iou_quadri",),
    "box_iou_rotated": ("box_iou_rotated",),
    "carafe": ("CARAFE", "CARAFENaive", "CARAFEPack", "carafe", "carafe_naive"),
    "cc_attention": ("CrissCrossAttention",),
    "chamfer_distance": ("chamfer_distance",),
    "contour_expand": ("contour_expand",),
    "conv2d_gradfix": ("conv2d", "conv_transpose2d"),
    "convex_iou": ("convex_giou", "convex_iou"),
    "corner_pool": ("CornerPool",),
    "correlation": ("Correlation",),
    "deform_conv": ("DeformConv2d", "DeformConv2dPack", "deform_conv2d"),
    "deform_roi_pool": ("DeformRoIPool", "DeformRoIPoolPack", "ModulatedDeformRoIPoolPack",
                        "deform_roi_pool"),
    "deprecated_wrappers": ("Conv2d", "ConvTranspose2d", "Linear", "MaxPool2d"),
    "diff_iou_rotated": ("diff_iou_rotated_2d", "diff_iou_rotated_3d"),
    "filtered_lrelu": ("filtered_lrelu",),
    "focal_loss": ("SigmoidFocalLoss", "SoftmaxFocalLoss", "sigmoid_focal_loss",
                   "softmax_focal_loss"),
    "furthest_point_sample": ("furthest_point_sample", "furthest_point_sample_with_dist"),
    "fused_bias_leakyrelu": ("FusedBiasLeakyReLU", "fused_bias_leakyrelu"),
    "gather_points": ("gather_points",),
    "group_points": ("GroupAll", "QueryAndGroup", "grouping_operation"),
    "info": ("get_compiler_version", "get_compiling_cuda_version"),
    "iou3d": ("boxes_iou3d", "boxes_iou_bev", "boxes_overlap_bev", "nms3d", "nms3d_normal",
              "nms_bev", "nms_normal_bev"),
    "knn": ("knn",),
    "masked_conv": ("MaskedConv2d", "masked_conv2d"),
    "merge_cells": ("BaseMergeCell", "ConcatCell", "GlobalPoolingCell", "SumCell"),
    "min_area_polygons": ("min_area_polygons",),
    "modulated_deform_conv": ("ModulatedDeformConv2d", "ModulatedDeformConv2dPack",
                              "modulated_deform_conv2d"),
    "multi_scale_deform_attn": ("MultiScaleDeformableAttention",
                                "multi_scale_deformable_attn_pytorch"),
    "nms": ("batched_nms", "nms", "nms_match", "nms_quadri", "nms_rotated", "soft_nms"),
    "pixel_group": ("pixel_group",),
    "point_sample": ("SimpleRoIAlign", "point_sample", "rel_roi_point_to_rel_img_point"),
    "points_in_boxes": ("points_in_boxes_all", "points_in_boxes_cpu", "points_in_boxes_part"),
    "points_in_polygons": ("points_in_polygons",),
    "points_sampler": ("PointsSampler",),
    "prroi_pool": ("PrRoIPool", "prroi_pool"),
    "psa_mask": ("PSAMask",),
    "riroi_align_rotated": ("RiRoIAlignRotated", "riroi_align_rotated"),
    "roi_align": ("RoIAlign", "roi_align"),
    "roi_align_rotated": ("RoIAlignRotated", "roi_align_rotated"),
    "roi_pool": ("RoIPool", "roi_pool"),
    "roiaware_pool3d": ("RoIAwarePool3d",),
    "roipoint_pool3d": ("RoIPointPool3d",),
    "rotated_feature_align": ("rotated_feature_align",),
    "saconv": ("SAConv2d",),
    "scatter_points": ("DynamicScatter", "dynamic_scatter"),
    "sparse_conv": ("SparseConv2d", "SparseConv3d", "SparseConvTranspose2d",
                    "SparseConvTranspose3d", "SparseInverseConv2d", "SparseInverseConv3d",
                    "SubMConv2d", "SubMConv3d"),
    "sparse_modules": ("SparseModule", "SparseSequential"),
    "sparse_pool": ("SparseMaxPool2d", "SparseMaxPool3d"),
    "sparse_structure": ("SparseConvTensor", "scatter_nd"),
    "sync_bn": ("SyncBatchNorm",),
    "three_interpolate": ("three_interpolate",),
    "three_nn": ("three_nn",),
    "tin_shift": ("TINShift", "tin_shift"),
    "upfirdn2d": ("filter2d", "upfirdn2d", "upsample2d"),
    "voxelize": ("Voxelization", "voxelization"),
}

# Names `mmcv.ops` itself does not re-export (importable from their submodule only).
SUBMODULE_ONLY: frozenset[str] = frozenset({
    "BaseMergeCell", "ConcatCell", "GlobalPoolingCell", "SumCell",
    "multi_scale_deformable_attn_pytorch",
})


def all_names() -> list[str]:
    """Every name in the table, sorted."""
    return sorted({name for names in CATALOG.values() for name in names})
