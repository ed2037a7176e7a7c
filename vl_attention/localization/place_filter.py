"""Discrete Bayes (HMM) filter over the map's places: retrieval scores + motion -> posterior.

The state is the map place the robot is at. The belief is kept sparse, so a
frame costs O(candidates + hypotheses x neighbours), never O(map size):

    belief(j) = w_j + epsilon        for every place j of the N-place map

``w`` holds the hypotheses (at most ``max_hypotheses``), ``epsilon`` the
uniform "anywhere else" mass that makes global relocalization possible.

* **Predict.** A hypothesis is a place and a speed bin (``speed_bins``
  speeds in ``[0, max_speed]`` along the place's heading, or
  ``[-max_speed, max_speed]`` with ``allow_reverse``): the bounded-speed model
  along the mapped trajectory. Its speed changes by one bin with probability
  ``speed_change`` per frame, then it moves to ``p_i + R_i d`` with
  ``d = (v dt, 0)`` -- or, with odometry, ``d`` = the measured translation in
  the robot frame -- spread over the neighbouring places (KD-tree) by a
  Gaussian. A fraction ``relocalization_mix`` of the mass then returns to the
  uniform component (kidnapping, a wrong lock).
* **Update.** ``likelihood='query_zscore'`` (default, needs the map's
  descriptors): every place the filter evaluates -- the retrieved candidates
  and the places its hypotheses sit on, scored directly against the query --
  gets ``z = (s - median) / spread`` against the query's similarities to a
  fixed sample of ``reference_samples`` map places, and the likelihood
  ``L(z) = alpha + (1 - alpha) exp(z / temperature_scale)``: a tracked place
  that scores low this frame is not dropped (``alpha`` = ``outlier_mix``, the
  chance the descriptor says nothing), and a condition change that shifts all
  of a query's similarities cancels. Places not evaluated get the sample's
  mean ``L``; each evaluated place's ratio is ``L(z_j) / mean L``.
  ``likelihood='map_calibrated'``: a retrieved place gets ``exp((s - s_floor)
  / T)`` against the places not retrieved (ratio 1), ``s_floor`` being the
  weakest retrieved similarity and ``T`` = ``temperature_scale`` x the
  impostor spread calibrated on the map (:mod:`.calibration`).
  ``likelihood='query_normalised'``: the same with ``T`` = ``temperature_scale``
  x the spread of this query's own top similarities (``reference``).
* **Estimate.** The most probable place and the hypotheses within
  ``cluster_radius_m`` of it give the position (weighted mean), its covariance
  (weighted spread plus the place spacing's discretisation variance) and the
  cluster's probability mass.
* **Evidence.** Before normalising, the update's total is the predictive
  likelihood of the frame under the filter against the uninformed model (a
  uniform belief, for which every ratio averages 1): ``log`` of it is the
  frame's Bayes factor for "the filter knows where it is". Its running mean
  over ``evidence_frames`` frames is the ``evidence`` (nats per frame); the
  latest frame's alone is ``frame_evidence``. With a
  descriptor that says nothing it stays near 0 however concentrated the
  posterior is. A consistent look-alike (aliasing) still counts as evidence:
  that is what :class:`~vl_attention.localization.Localizer` asks PnP to rule out.
* **State.** Initialising until the cluster mass first exceeds
  ``tracking_mass`` with ``evidence >= min_evidence``; tracking while the mass
  stays above ``lost_mass`` and the evidence above half ``min_evidence``;
  lost below.
"""

from dataclasses import dataclass
from itertools import chain
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree

from vl_attention.config import ConfigError

INITIALISING, TRACKING, LOST = 'initialising', 'tracking', 'lost'
FILTER_STATES = (INITIALISING, TRACKING, LOST)
LIKELIHOODS = ('query_zscore', 'map_calibrated', 'query_normalised')
REFERENCE_SEED = 0


@dataclass(frozen=True)
class PlaceFilterConfig:
    """Motion and observation model of the place filter."""

    max_speed_mps: float = 15.0
    speed_bins: int = 7
    speed_change: float = 0.02         # per frame; chosen on Nordland 0-899 + synthetic validation
    allow_reverse: bool = False
    odometry_sigma_m: float = 1.0
    odometry_sigma_fraction: float = 0.1
    relocalization_mix: float = 0.02
    likelihood: str = 'query_zscore'
    reference_candidates: int = 100    # query_normalised: similarities its spread comes from
    reference_samples: int = 512       # query_zscore: map places the z-score comes from
    outlier_mix: float = 0.05          # query_zscore: alpha of L(z)
    # query_zscore: tau of exp(z / tau); chosen on Nordland 0-899 and a synthetic validation
    # town (map_calibrated and query_normalised use it as a factor on their spread: ~0.35 / 2)
    temperature_scale: float = 2.0
    max_hypotheses: int = 2000
    prune_ratio: float = 1e-6
    cluster_radius_m: float = 10.0
    # the robot is near, not at, a mapped place (another lane, between keyframes): fitted so
    # the median 2-D NEES is 1.39 on the synthetic validation traversals (day, overcast, dusk)
    position_floor_m: float = 0.85
    tracking_mass: float = 0.5
    lost_mass: float = 0.2
    evidence_frames: int = 10      # window of the evidence's running mean
    min_evidence: float = 0.3      # nats per frame to enter tracking
    min_updates: int = 3           # frames seen before the state may leave initialising
    max_gap_s: float = 10.0
    default_dt_s: float = 0.1

    def __post_init__(self) -> None:
        if self.max_speed_mps <= 0 or self.speed_bins < 2:
            raise ConfigError('need max_speed_mps > 0 and speed_bins >= 2')
        if not 0.0 <= self.speed_change <= 0.5:
            raise ConfigError('speed_change must lie in [0, 0.5]')
        if not 0.0 <= self.relocalization_mix < 1.0:
            raise ConfigError('relocalization_mix must lie in [0, 1)')
        if not 0.0 < self.lost_mass <= self.tracking_mass <= 1.0:
            raise ConfigError('need 0 < lost_mass <= tracking_mass <= 1')
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(f'likelihood {self.likelihood!r} is not one of {LIKELIHOODS}')
        if self.evidence_frames < 1 or self.min_evidence < 0:
            raise ConfigError('need evidence_frames >= 1 and min_evidence >= 0')
        if not 0.0 < self.outlier_mix < 1.0 or self.reference_samples < 16:
            raise ConfigError('need 0 < outlier_mix < 1 and reference_samples >= 16')
        if self.temperature_scale <= 0 or self.max_hypotheses < 1 or self.max_gap_s <= 0:
            raise ConfigError('temperature_scale, max_hypotheses and max_gap_s must be > 0')


@dataclass(frozen=True)
class Motion:
    """Robot motion since the previous frame: odometry, or only the elapsed time."""

    dt_s: float
    translation_m: Optional[np.ndarray] = None   # (dx, dy) in the previous robot frame
    source: str = 'bounded_speed'


@dataclass(frozen=True)
class FilterEstimate:
    """The posterior, summarised for output."""

    state: str
    place_index: int
    position_enu_m: np.ndarray
    position_covariance_m2: np.ndarray
    mass: float
    hypotheses: int
    evidence: float = 0.0          # nats per frame, see the module docstring
    frame_evidence: float = float('nan')   # the latest frame's log Bayes factor (nats)


class PlaceFilter:
    """The HMM over the places of one map (positions ``(N, 3)`` and headings ``(N,)``)."""

    def __init__(self, positions_enu_m: np.ndarray, headings_rad: np.ndarray, *,
                 temperature: float, config: PlaceFilterConfig = PlaceFilterConfig(),
                 descriptors: Optional[np.ndarray] = None):
        if config.likelihood == 'query_zscore' and descriptors is None:
            raise ValueError("likelihood 'query_zscore' scores places against the map's "
                             "descriptors; pass descriptors=, or use 'query_normalised'")
        self.descriptors = descriptors
        self.reference_places = _reference_places(len(positions_enu_m), config.reference_samples)
        # the fixed sample every frame is z-scored against, gathered once (a memory map's
        # fancy indexing copies the rows each time)
        self.reference_descriptors = None if descriptors is None else np.ascontiguousarray(
            descriptors[self.reference_places], np.float32)
        self.positions = np.asarray(positions_enu_m, np.float64)
        self.headings = np.asarray(headings_rad, np.float64)
        self.tree = cKDTree(self.positions[:, :2])
        self.temperature = float(temperature) * config.temperature_scale
        self.config = config
        self.spacing_m = _median_spacing(self.tree, self.positions)
        low = -config.max_speed_mps if config.allow_reverse else 0.0
        self.speeds_mps = np.linspace(low, config.max_speed_mps, config.speed_bins)
        self.speed_step_mps = float(self.speeds_mps[1] - self.speeds_mps[0])
        self.speed_count = config.speed_bins
        self.reset()

    @property
    def size(self) -> int:
        """Number of map places."""
        return len(self.positions)

    @property
    def states(self) -> int:
        """Number of (place, speed) states."""
        return self.size * self.speed_count

    def reset(self) -> None:
        """Forget everything: a uniform belief, state initialising."""
        self.indices: np.ndarray = np.zeros(0, np.int64)
        self.weights: np.ndarray = np.zeros(0)
        self.epsilon = 1.0 / self.states
        self.state = INITIALISING
        self.updates = 0
        self.evidence = 0.0
        self.frame_evidence = float('nan')
        self.last_stamp_s: Optional[float] = None

    def step(self, candidates: np.ndarray, similarities: np.ndarray, motion: Motion,
             *, stamp_s: Optional[float] = None, reference: Optional[np.ndarray] = None,
             query: Optional[np.ndarray] = None) -> FilterEstimate:
        """Predict with ``motion``, update with the retrieved candidates, estimate.

        ``query``: the frame's descriptor ``(D,)``, which ``query_zscore``
        scores the hypotheses' places with (required there).
        ``reference``: a longer list of this query's top similarities, whose
        spread sets the temperature with ``likelihood='query_normalised'``
        (default: ``similarities``).

        (Scoring the tracked hypotheses that retrieval did not return against
        the weakest retrieved similarity was tried and lowered Nordland's
        tuning-split recall from 0.66 to 0.51: most true places score below
        that floor, so it penalises the right track.)
        """
        if motion.dt_s > self.config.max_gap_s:
            self.reset()
        elif len(self.indices):
            self.predict(motion)
        candidates = np.asarray(candidates, np.int64)
        if self.config.likelihood == 'query_zscore':
            if query is None:
                raise ValueError("likelihood 'query_zscore' needs the query descriptor (query=)")
            self.update_scored(candidates, np.asarray(query, np.float32))
        else:
            self.update(candidates, np.asarray(similarities, np.float64),
                        temperature=self._temperature(similarities, reference))
        self.updates += 1
        self.last_stamp_s = stamp_s
        return self.estimate()

    def predict(self, motion: Motion) -> None:
        """Move the hypotheses by ``motion`` and mix back uniform mass."""
        if motion.translation_m is None:
            self._change_speeds()
        centres, sigma_m = self._motion_targets(motion)
        near = self.tree.query_ball_point(centres[:, :2], 3.0 * sigma_m)
        counts = np.fromiter((len(n) for n in near), np.int64, len(near))
        if counts.sum() == 0:
            self.indices, self.weights = np.zeros(0, np.int64), np.zeros(0)
        else:
            places = np.fromiter(chain.from_iterable(near), np.int64, int(counts.sum()))
            owner = np.repeat(np.arange(len(near)), counts)
            distance = np.linalg.norm(self.positions[places, :2] - centres[owner, :2], axis=1)
            kernel = np.exp(-0.5 * (distance / sigma_m) ** 2)
            kernel /= np.bincount(owner, weights=kernel, minlength=len(near))[owner]
            bins = self.indices[owner] % self.speed_count
            self._set_sparse(places * self.speed_count + bins, self.weights[owner] * kernel)
        keep = 1.0 - self.config.relocalization_mix
        self.weights *= keep
        self.epsilon = self.epsilon * keep + self.config.relocalization_mix / self.states

    def _change_speeds(self) -> None:
        """Each speed bin leaks ``speed_change`` to each neighbouring bin (reflecting ends)."""
        change = self.config.speed_change
        places, bins = np.divmod(self.indices, self.speed_count)
        keys, masses = [self.indices], [self.weights * (1.0 - 2.0 * change)]
        for step in (-1, 1):
            moved = bins + step
            moved = np.where((moved < 0) | (moved >= self.speed_count), bins, moved)
            keys.append(places * self.speed_count + moved)
            masses.append(self.weights * change)
        self._set_sparse(np.concatenate(keys), np.concatenate(masses))

    def _motion_targets(self, motion: Motion) -> tuple[np.ndarray, float]:
        """Return the expected positions after ``motion`` and the kernel width (m)."""
        cfg = self.config
        places, bins = np.divmod(self.indices, self.speed_count)
        heading = self.headings[places]
        if motion.translation_m is None:
            dx = self.speeds_mps[bins] * motion.dt_s
            dy = np.zeros_like(dx)
            sigma = max(0.5 * self.speed_step_mps * motion.dt_s, 0.5 * self.spacing_m)
        else:
            dx, dy = np.asarray(motion.translation_m, np.float64)[:2]
            sigma = max(np.hypot(cfg.odometry_sigma_m,
                                 cfg.odometry_sigma_fraction * np.hypot(dx, dy)),
                        0.5 * self.spacing_m)
        shift = np.stack([np.cos(heading) * dx - np.sin(heading) * dy,
                          np.sin(heading) * dx + np.cos(heading) * dy,
                          np.zeros_like(heading)], axis=1)
        return self.positions[places] + shift, sigma

    def _set_sparse(self, keys: np.ndarray, masses: np.ndarray) -> None:
        unique, inverse = np.unique(keys, return_inverse=True)
        self.indices = unique
        self.weights = np.bincount(inverse, weights=masses, minlength=len(unique))

    def _temperature(self, similarities: np.ndarray,
                     reference: Optional[np.ndarray]) -> float:
        if self.config.likelihood == 'map_calibrated':
            return self.temperature
        spread = np.std(similarities if reference is None else reference)
        return max(float(spread), 1e-6) * self.config.temperature_scale

    def update(self, candidates: np.ndarray, similarities: np.ndarray, *,
               temperature: Optional[float] = None) -> None:
        """Multiply in ``exp((s - s_floor) / T)`` for the retrieved places and normalise."""
        temperature = temperature or self.temperature
        valid = candidates >= 0
        candidates, similarities = candidates[valid], similarities[valid]
        if len(candidates) == 0:
            return
        floor = similarities.min()
        self.apply_ratios(candidates,
                          np.exp(np.clip((similarities - floor) / temperature, -50.0, 50.0)))

    def update_scored(self, candidates: np.ndarray, query: np.ndarray) -> None:
        """Score the candidates and the hypotheses' places against ``query``; multiply in L(z)."""
        assert self.descriptors is not None and self.reference_descriptors is not None
        places = np.union1d(candidates[candidates >= 0], self.indices // self.speed_count)
        reference = self.reference_descriptors @ query
        median = float(np.median(reference))
        spread = max(float(np.std(reference)), 1e-6)
        scores = np.asarray(self.descriptors[places], np.float32) @ query
        likelihood = self._zscore_likelihood((scores - median) / spread)
        self.apply_ratios(places, likelihood
                          / self._zscore_likelihood((reference - median) / spread).mean())

    def _zscore_likelihood(self, z: np.ndarray) -> np.ndarray:
        alpha = self.config.outlier_mix
        exponent = np.clip(np.asarray(z, np.float64) / self.config.temperature_scale, -50.0, 50.0)
        return alpha + (1.0 - alpha) * np.exp(exponent)

    def apply_ratios(self, places: np.ndarray, ratios: np.ndarray, *,
                     evidence: bool = True) -> None:
        """Multiply place ``places[i]``'s belief (every speed bin) by ``ratios[i]``; normalise.

        Places not listed keep ratio 1 (the uniform component). ``evidence``:
        count the update's Bayes factor in the running evidence (a frame's
        retrieval update does; an extra measurement of the same frame does not).
        """
        if len(places) == 0:
            return
        keys = (np.asarray(places, np.int64)[:, None] * self.speed_count
                + np.arange(self.speed_count)[None]).reshape(-1)
        ratio = np.repeat(np.asarray(ratios, np.float64), self.speed_count)
        merged = np.union1d(self.indices, keys)
        weights = np.zeros(len(merged))
        weights[np.searchsorted(merged, self.indices)] = self.weights
        position = np.searchsorted(merged, keys)
        # belief = w + epsilon; a ratio r turns it into (w + epsilon) r = w' + epsilon
        weights[position] = np.maximum((weights[position] + self.epsilon) * ratio - self.epsilon,
                                       0.0)
        total = weights.sum() + self.epsilon * self.states
        if evidence:
            self._record_evidence(float(np.log(max(total, 1e-300))))
        self.indices, self.weights = merged, weights / total
        self.epsilon /= total
        self._prune()

    def _record_evidence(self, log_bayes_factor: float) -> None:
        """Update the running mean of the per-frame log Bayes factor."""
        self.frame_evidence = log_bayes_factor
        window = min(self.updates + 1, self.config.evidence_frames)
        self.evidence += (log_bayes_factor - self.evidence) / window

    def _prune(self) -> None:
        if not len(self.weights):
            return
        keep = self.weights >= self.config.prune_ratio * self.weights.max()
        if keep.sum() > self.config.max_hypotheses:
            keep = np.zeros(len(self.weights), bool)
            keep[np.argsort(self.weights)[-self.config.max_hypotheses:]] = True
        dropped = self.weights[~keep].sum()
        self.indices, self.weights = self.indices[keep], self.weights[keep]
        self.epsilon += dropped / self.states

    def estimate(self) -> FilterEstimate:
        """Position, covariance and state from the most probable place's cluster."""
        if not len(self.weights) or self.weights.max() <= 0.0:
            return self._no_estimate()
        places, inverse = np.unique(self.indices // self.speed_count, return_inverse=True)
        place_weights = np.bincount(inverse, weights=self.weights, minlength=len(places))
        best = int(np.argmax(place_weights))
        centre = self.positions[places[best]]
        distance = np.linalg.norm(self.positions[places, :2] - centre[:2], axis=1)
        near = distance <= self.config.cluster_radius_m
        weights, points = place_weights[near], self.positions[places[near]]
        # the uniform component's share of the cluster counts too
        mass = float(weights.sum() + self.epsilon * self.speed_count * near.sum())
        mean = weights @ points / weights.sum()
        centred = points - mean
        covariance = (centred * weights[:, None]).T @ centred / weights.sum()
        covariance += np.diag([1.0, 1.0, 0.0]) * (self.spacing_m ** 2 / 12.0
                                                  + self.config.position_floor_m ** 2)
        self.state = self._next_state(mass)
        return FilterEstimate(self.state, int(places[best]), mean, covariance, mass,
                              len(self.indices), self.evidence, self.frame_evidence)

    def _no_estimate(self) -> FilterEstimate:
        self.state = LOST if self.state != INITIALISING else INITIALISING
        return FilterEstimate(self.state, -1, np.full(3, np.nan), np.full((3, 3), np.nan), 0.0, 0)

    def _next_state(self, mass: float) -> str:
        if self.updates < self.config.min_updates:
            return INITIALISING
        cfg = self.config
        if mass >= cfg.tracking_mass and self.evidence >= cfg.min_evidence:
            return TRACKING
        if self.state == TRACKING and mass >= cfg.lost_mass \
                and self.evidence >= 0.5 * cfg.min_evidence:
            return TRACKING
        return INITIALISING if self.state == INITIALISING else LOST


def _reference_places(count: int, samples: int) -> np.ndarray:
    """Return a fixed, seeded sample of place indices (all of them on small maps)."""
    if count <= samples:
        return np.arange(count)
    return np.sort(np.random.default_rng(REFERENCE_SEED).choice(count, samples, replace=False))


def _median_spacing(tree: cKDTree, positions: np.ndarray) -> float:
    """Median distance from a place to its nearest other place (sampled on large maps)."""
    if len(positions) < 2:
        return 1.0
    sample = positions[np.linspace(0, len(positions) - 1, min(len(positions), 2000)).astype(int)]
    distances, _ = tree.query(sample[:, :2], k=2)
    spacing = float(np.median(distances[:, 1]))
    return spacing if spacing > 0 else 1.0
