"""A user dataset for tests: scikit-learn's digits with one poisoned (NaN) training image."""

from tierflow.orchestrator.data import load_digits


def digits_with_one_nan():
    ds = load_digits(0.2, seed=0)
    x = ds.x_train.copy()
    x[0] = float("nan")
    return x, ds.y_train, ds.x_test, ds.y_test
