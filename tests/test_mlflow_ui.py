"""Tracking against a real MLflow server backed by PostgreSQL, and its UI as users see it in Chromium."""

import shutil

import mlflow
import pytest

from csfnet.mlflow_tracking import stage_run, ui_link

from .conftest import ARTIFACTS, free_port
from .services import mlflow_server, postgres

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def tracking_server(tmp_path, monkeypatch):
    with postgres(free_port()) as db, mlflow_server(db, tmp_path / "artifacts", free_port()) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        yield url
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_stage_runs_nest_under_one_parent_in_postgres(tracking_server, monkeypatch):
    for i, value in enumerate((0.41, 0.57)):
        monkeypatch.setenv("CSFNET_PARAMS", f"params-{i}.yaml")  # two pipeline executions
        with stage_run("eval", params={"model": f"m{i}"}):
            mlflow.log_metric("map50", value)
        with stage_run("robustness", final=True):
            mlflow.log_metric("noise_map50", value / 2)
    runs = mlflow.search_runs(experiment_names=["csfnet"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and len(children) == 4
    assert {r.info.status for r in parents} == {"FINISHED"}
    for parent in parents:
        stages = {
            c.data.tags["csfnet.stage"] for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        }
        assert stages == {"eval", "robustness"}


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_mlflow_ui_shows_both_runs_and_their_map(tracking_server, monkeypatch):
    from playwright.sync_api import sync_playwright

    for name, value in (("csfnet-n", 0.612), ("yolov8n", 0.487)):
        monkeypatch.setenv("CSFNET_PARAMS", f"{name}.yaml")
        with stage_run("eval", tags={"mlflow.runName": name}):
            mlflow.log_metric("map50", value)
    experiment = mlflow.get_experiment_by_name("csfnet")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not MLflow 3's GenAI view
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 2000, "height": 700})
        # the experiment's own address, as a fresh browser opens it: it must land on the training runs
        page.goto(ui_link(), wait_until="domcontentloaded")  # the link `csfnet summary` prints
        page.get_by_text("pipeline-", exact=False).first.wait_for(timeout=60_000)
        page.locator("[data-component-id$='runnamecellrenderer.tsx_46']").first.click()  # expand the parent run
        page.get_by_text("csfnet-n", exact=False).first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Columns").click()  # metric columns are opt-in in MLflow 3's runs table
        page.get_by_text("map50", exact=True).first.click()
        page.keyboard.press("Escape")
        page.get_by_text("0.612", exact=False).first.wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "mlflow_ui_runs.png"), full_page=True)
        text = page.inner_text("body")
        browser.close()
    assert "csfnet-n" in text and "yolov8n" in text
    assert "map50" in text
    assert "0.612" in text and "0.487" in text
