"""Stage 4: runs -> the papers' metrics, the report, the scaling-law fit and forecasts."""
