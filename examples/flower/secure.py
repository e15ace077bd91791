"""A Flower quickstart-style app (Message API): NumPy logistic regression on scikit-learn's bundled
breast-cancer data. quickstart.py aggregates with Flower's FedAvg; secure.py is the same app with
securefl's secure sum (secagg+) swapped in — ``diff quickstart.py secure.py``. Run: ``python run.py``.
"""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from task import NUM_ROUNDS, initial_weights, load_partition, train_locally

from securefl.flower import SecureFL

FINAL: list[ArrayRecord] = []  # the final model, for run.py

secure = SecureFL(privacy="secagg+", weight_bound=200)  # weight_bound: most examples a client holds
app = ClientApp(mods=[secure.client_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    x, y = load_partition(context.node_config["partition-id"], context.node_config["num-partitions"])
    weights = train_locally(msg.content["arrays"].to_numpy_ndarrays(), x, y)
    content = RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord({"num-examples": len(y)})})
    return Message(content, reply_to=msg)


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    result = secure.run(grid, ArrayRecord(initial_weights()), NUM_ROUNDS)
    FINAL.append(result.arrays)
