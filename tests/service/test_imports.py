"""The service never imports training code: no torch, no sentence-transformers, no offline jobs."""

import subprocess
import sys


def test_service_imports_no_training_code() -> None:
    code = (
        "import sys, reaseq.service.server, reaseq.bench.client;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'sentence_transformers')"
        " or m.startswith(('reaseq.offline', 'reaseq.models'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"service pulled in training modules: {done.stdout}{done.stderr}"
