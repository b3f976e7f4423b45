"""vmhealth is pure Python: everything is in setup.cfg, and `pip install .` needs no C
compiler and no llhttp.

The native probe lane, which repeats settled network probes in C, is a package of its
own, built from src/native (src/native/setup.py): `pip install ./src/native` beside
vmhealth, or the python3-vmhealth-fastlane RPM (packaging/rpm/python-vmhealth-fastlane.spec).
The daemon uses it when it is installed and runs every probe in Python otherwise
(docs/packaging.md, "The native lane").
"""

from setuptools import setup

setup()
