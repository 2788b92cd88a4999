"""Feedback scored on a worker thread while the caller goes on sampling."""

import threading

import pytest
import torch

from editspecialists.training.overlap import BackgroundScoring


def brightness_and_thread(edits, inputs, styles):
    """A scorer that also records which thread ran it: (B, G) scores."""
    brightness_and_thread.threads.add(threading.current_thread().name)
    return {"brightness": edits.mean(dim=(2, 3, 4)), "change": (edits - inputs[:, None]).abs().mean(dim=(2, 3, 4))}


brightness_and_thread.threads = set()


def batches(device, count=3):
    generator = torch.Generator().manual_seed(0)
    return [tuple(torch.rand(shape, generator=generator).to(device) for shape in
                  ((2, 3, 3, 8, 8), (2, 3, 8, 8), (2, 3, 8, 8))) for _ in range(count)]


def score_all(scoring, data):
    for batch in data:
        scoring.submit(*batch)
    results = scoring.results()
    scoring.close()
    return results


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_background_scores_equal_inline_scores_in_submission_order(device):
    data = batches(device)
    brightness_and_thread.threads.clear()
    inline = score_all(BackgroundScoring(brightness_and_thread, device, enabled=False), data)
    assert brightness_and_thread.threads == {threading.current_thread().name}

    brightness_and_thread.threads.clear()
    background = score_all(BackgroundScoring(brightness_and_thread, device, enabled=True), data)
    assert all(name.startswith("feedback") for name in brightness_and_thread.threads)

    assert len(background) == len(data)
    for first, second in zip(inline, background):
        assert first.keys() == second.keys()
        assert all(torch.equal(first[name], second[name]) for name in first)


def test_a_scorer_error_is_raised_by_results_and_the_queue_resets():
    def broken(edits, inputs, styles):
        raise ValueError("detector exploded")

    scoring = BackgroundScoring(broken, "cpu", enabled=True)
    scoring.submit(*batches("cpu", 1)[0])
    with pytest.raises(ValueError, match="detector exploded"):
        scoring.results()
    assert scoring.results() == []
    scoring.close()
