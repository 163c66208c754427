"""Browser tests: the dashboard's pages in headless Chromium, against real keysvc and dashboard
processes."""
