"""What a served scikit-learn model does not load: pandas (sklearn.utils.fixes), numpy.testing and
numpy.f2py (scipy's array-API layer), httpx and the other commands' modules. Each check runs in a
fresh interpreter, and each deferred module still works when a model does use it."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(script: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_loading_a_sklearn_pickle_leaves_out_pandas_and_numpy_test_tools(artifacts):
    out = _run(f"""
        import sys
        from pathlib import Path
        from shipyard.runtimes.pickled import read_pickle
        model = read_pickle(Path({str(artifacts["sk_logreg"])!r}))
        print(sorted(m for m in ("pandas", "pyarrow", "unittest", "argparse", "numpy.f2py.crackfortran")
                     if m in sys.modules))
        import numpy as np
        print(model.predict(np.array([[5.1, 3.5, 1.4, 0.2]])).tolist())
        np.testing.assert_allclose([1.0], [1.0])             # the deferred module loads on use
        from numpy.testing import assert_array_equal
        import numpy.f2py
        print(type(sys.modules["numpy.testing"]).__name__, callable(assert_array_equal),
              numpy.f2py.get_include().endswith("src"))
    """)
    left_out, prediction, used = out.splitlines()
    assert left_out == "[]"
    assert prediction in ("[0]", "['setosa']")
    assert used == "module True True"


def test_the_serve_command_imports_neither_httpx_nor_the_other_commands():
    out = _run("""
        import sys
        from shipyard.cli.main import build_app
        build_app("serve")
        print(sorted(m for m in ("httpx", "yaml", "grpc", "shipyard.cli.control", "shipyard.cli.build",
                                 "shipyard.cli.batch", "shipyard.server.grpc_service") if m in sys.modules))
        import shipyard.server.runner, shipyard.server.grpc_service  # the model server's own gRPC
        print("grpc" in sys.modules, "httpx" in sys.modules)
        build_app()
        print("shipyard.cli.control" in sys.modules)
    """)
    assert out.splitlines() == ["[]", "False False", "True"]
