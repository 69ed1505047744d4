"""Start the Latent Studio web UI: `python launch.py [--port 7860] [--listen --auth user:pass] ...`"""

from webui.launcher import main

if __name__ == "__main__":
    main()
