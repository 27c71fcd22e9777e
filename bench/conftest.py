"""pytest-benchmark settings: small cases by default, the large ones with --bench-large."""


def pytest_addoption(parser):
    parser.addoption("--bench-large", action="store_true", default=False,
                     help="also run the large cases (B = 16384 and 65536)")
