# Makes conf/ importable as the package tlrun.conf (see pyproject.toml) so Hydra finds it installed.
