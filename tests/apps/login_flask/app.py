"""``python app.py <port>``: the same app factory, started by the app's own script on Flask's threaded server."""

import sys

from loginapp import create_app

if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
