"""The 3D judge's Janus detector on hand-made fields: the true objects pass, a feature painted twice is caught."""

import math

import pytest
import torch
from torch import nn

from nfsd_lab.field_judge import (
    judge_field, faded_fractions, feature_fractions, feature_scores, is_janus, outcome,
)
from nfsd_lab.micro.judge import true_object
from nfsd_lab.micro.world import Truth

BALL, CUBE = true_object(Truth("ball", "red", "yellow")), true_object(Truth("cube", "blue", "white"))


class HandMadeField(nn.Module):
    """A near-solid object from its SDF; albedo = body colour, feature colour where ``feature(points, normals)``."""

    def __init__(self, obj, feature, body=None):
        super().__init__()
        self.bound, self.obj, self.feature = 1.0, obj, feature
        self.body = obj.instances[0].body if body is None else body
        self.anchor = nn.Parameter(torch.zeros(()))  # a device for the judge to find

    def forward(self, points):
        sdf = self.obj.sdf(points)
        density = 500.0 * torch.sigmoid(-sdf / 0.002)
        offsets = torch.eye(3) * 1e-3
        normals = torch.nn.functional.normalize(
            torch.stack([self.obj.sdf(points + o) - self.obj.sdf(points - o) for o in offsets], -1), dim=-1)
        instance = self.obj.instances[0]
        is_feature = self.feature(points, normals)[..., None]
        albedo = torch.where(is_feature, torch.tensor(instance.feature), torch.tensor(self.body))
        return density, albedo


def true_feature(obj):
    return lambda points, normals: obj.feature(points, normals, obj.instances[0].feature_size)


def mirrored(obj):
    """The feature on the front and again on the back (y → −y): a two-faced object."""
    flip = torch.tensor([1.0, -1.0, 1.0])
    size = obj.instances[0].feature_size
    return lambda points, normals: obj.feature(points, normals, size) | obj.feature(points * flip, normals * flip, size)


def test_is_janus_by_hand():
    assert not is_janus(torch.tensor([0.5, 0.3, 0.1, 0.0, 0.0, 0.0, 0.1, 0.3]))  # one face, grazing slivers at the sides
    assert is_janus(torch.tensor([0.5, 0.3, 0.1, 0.0, 0.25, 0.0, 0.1, 0.3]))  # seen from 0° and from 180°
    assert is_janus(torch.tensor([0.1, 0.0, 0.3, 0.0, 0.0, 0.0, 0.3, 0.0]))  # on both sides, not the front
    assert not is_janus(torch.zeros(8))  # no feature at all is another failure, not Janus


def test_feature_fractions_count_covered_pixels_nearer_a_feature_colour():
    red, yellow = BALL.instances[0].body, BALL.instances[0].feature
    albedo = torch.tensor([[[red, yellow], [yellow, (1.0, 1.0, 1.0)]]])  # (1, 2, 2, 3)
    opacity = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])  # the white pixel is background
    assert torch.allclose(feature_fractions(albedo, opacity, BALL), torch.tensor([2 / 3]))


def test_a_covered_white_pixel_is_faded_not_feature():
    red, yellow, white = BALL.instances[0].body, BALL.instances[0].feature, (1.0, 1.0, 1.0)
    albedo = torch.tensor([[[red, yellow], [white, (0.97, 0.95, 0.9)]]])  # all four covered
    opacity = torch.ones(1, 2, 2)
    assert torch.allclose(feature_fractions(albedo, opacity, BALL), torch.tensor([1 / 4]))
    assert torch.allclose(faded_fractions(albedo, opacity, BALL), torch.tensor([2 / 4]))


def test_outcome_by_hand():
    none, front = torch.zeros(8), torch.tensor([0.5, 0.3, 0.1, 0.0, 0.0, 0.0, 0.1, 0.3])
    assert outcome(front, torch.zeros(8)) == "faithful"
    assert outcome(front.roll(2) + front.roll(-2), torch.zeros(8)) == "janus"  # seen from 90° and 270°
    assert outcome(none, torch.zeros(8)) == "faceless"  # no Janus, but the face is gone
    assert outcome(none, torch.full((8,), 0.6)) == "faded"
    assert outcome(none, torch.full((8,), 0.4)) == "faceless"  # some white is not a collapse
    assert outcome(none, torch.zeros(8), has_feature=False) == "faithful"


def test_feature_score_is_the_way_from_body_to_feature_colour():
    red, yellow = torch.tensor(BALL.instances[0].body), torch.tensor(BALL.instances[0].feature)
    faded = red + 0.3 * (yellow - red)  # a face smeared at 30%: nearest colour says body, the score says 0.3
    albedo = torch.stack([red, yellow, faded, torch.ones(3)]).view(1, 2, 2, 3)
    opacity = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    assert torch.allclose(feature_scores(albedo, opacity, BALL), torch.tensor([(0.0 + 1.0 + 0.3) / 3]), atol=1e-6)
    assert torch.allclose(feature_fractions(albedo, opacity, BALL), torch.tensor([1 / 3]))


@pytest.mark.parametrize("obj", [BALL, CUBE], ids=["ball", "cube"])
def test_true_object_is_not_janus_and_scores_well(obj):
    result = judge_field(HandMadeField(obj, true_feature(obj)), obj, size=48)
    assert not result["janus"] and result["outcome"] == "faithful"
    fractions = result["feature_fractions"]
    assert fractions[0] > 0.25 and fractions[4] == 0.0  # seen from the front, never from behind
    assert result["silhouette_iou"] > 0.9 and result["color_error"] < 0.05


@pytest.mark.parametrize("obj", [BALL, CUBE], ids=["ball", "cube"])
def test_two_faced_object_is_janus_and_costs_colour(obj):
    good = judge_field(HandMadeField(obj, true_feature(obj)), obj, size=48)
    janus = judge_field(HandMadeField(obj, mirrored(obj)), obj, size=48)
    assert janus["janus"] and janus["outcome"] == "janus" and janus["feature_fractions"][4] > 0.25
    assert janus["color_error"] > good["color_error"] + 0.03  # the label is small: ~0.05 on the cube
    assert janus["silhouette_iou"] == pytest.approx(good["silhouette_iou"])  # same shape: IoU cannot see Janus


def test_feature_all_around_is_janus():
    everywhere = lambda points, normals: torch.ones(points.shape[:-1], dtype=torch.bool)  # noqa: E731
    assert judge_field(HandMadeField(BALL, everywhere), BALL, size=48)["janus"]
    assert math.isclose(judge_field(HandMadeField(BALL, everywhere), BALL, size=48)["feature_fractions"][2], 1.0)


def test_a_plain_ball_is_faceless_and_a_white_one_faded_not_janus():
    nowhere = lambda points, normals: torch.zeros(points.shape[:-1], dtype=torch.bool)  # noqa: E731
    plain = judge_field(HandMadeField(BALL, nowhere), BALL, size=32)
    assert plain["outcome"] == "faceless" and max(plain["feature_fractions"]) == 0.0
    # Colours collapsed to the training background: white is nearer the yellow face than the red body, which
    # the judge once counted as a face seen from everywhere.
    white = judge_field(HandMadeField(BALL, nowhere, body=(0.97, 0.97, 0.97)), BALL, size=32)
    assert white["outcome"] == "faded" and not white["janus"] and max(white["feature_fractions"]) == 0.0
    assert white["color_error"] > plain["color_error"] + 0.3
