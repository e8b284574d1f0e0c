"""Server-rendered pages: the studio's web messenger under /app/ and the guests' inquiry form under /f/."""
