// Enqueue eventjobs jobs from Java (kafka-clients) and follow them to their end.
//
// Built from the public contract only (docs/events.md, docs/schema/v1/, docs/producers.md):
//   topic <namespace>.events, key = job id (UTF-8), value = the `enqueued` event as JSON;
//   partition: the job partition rule (murmur2 of the key, as the Java client's default
//   partitioner picks it, so no setting is needed; it is checked here against the rule);
//   job id: a random UUID, or with --key-prefix the idempotency-key rule
//   uuid5(6f1c6c5e-8a31-4d0b-9a57-0c4be7d1f2a9, utf8(name + "\u001f" + key));
//   producer: acks=all, idempotence on, not transactional.
// It then follows the event log (read_committed, deduplicated by event_id) until every job it
// enqueued has a terminal event, printing
//   enqueued <job_id> <partition> <job partition>
//   done <job_id> <type> <result as JSON>
//
// Run (Java 11+ JDK; the jars from `mvn dependency:build-classpath` in this folder):
//   java -cp "$(cat classpath.txt)" EnqueueAndFollow.java --bootstrap 127.0.0.1:9092 \
//       --namespace shop --name add --count 3 --args '{"a": 1, "b": 2}'

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.net.InetAddress;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.time.Duration;
import java.time.Instant;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.common.utils.Utils;

public class EnqueueAndFollow {
    /** The idempotency-key namespace of eventjobs (docs/events.md, "Job ids"). */
    static final UUID EVENTJOBS_NAMESPACE = UUID.fromString("6f1c6c5e-8a31-4d0b-9a57-0c4be7d1f2a9");
    static final Set<String> TERMINAL = Set.of("completed", "cancelled", "dead_lettered", "discarded");
    static final DateTimeFormatter WIRE_TIME =
            DateTimeFormatter.ofPattern("yyyy-MM-dd'T'HH:mm:ss.SSS'Z'").withZone(ZoneOffset.UTC);
    static final ObjectMapper JSON = new ObjectMapper();

    /** The job partition rule: murmur2 of the job id's UTF-8 bytes, sign bit cleared, modulo the count. */
    static int jobPartition(String jobId, int partitions) {
        return Utils.toPositive(Utils.murmur2(jobId.getBytes(StandardCharsets.UTF_8))) % partitions;
    }

    /** RFC 4122 name-based UUID, version 5 (SHA-1); Java has only version 3 built in. */
    static UUID uuid5(UUID namespace, String name) throws Exception {
        MessageDigest sha1 = MessageDigest.getInstance("SHA-1");
        sha1.update(ByteBuffer.allocate(16).putLong(namespace.getMostSignificantBits())
                .putLong(namespace.getLeastSignificantBits()).array());
        byte[] hash = sha1.digest(name.getBytes(StandardCharsets.UTF_8));
        hash[6] = (byte) ((hash[6] & 0x0f) | 0x50);
        hash[8] = (byte) ((hash[8] & 0x3f) | 0x80);
        ByteBuffer bytes = ByteBuffer.wrap(hash, 0, 16);
        return new UUID(bytes.getLong(), bytes.getLong());
    }

    /** The job id of an idempotency key (docs/events.md, "Job ids"). */
    static String jobIdForKey(String name, String key) throws Exception {
        return uuid5(EVENTJOBS_NAMESPACE, name + "\u001f" + key).toString();
    }

    /** An `enqueued` event as docs/schema/v1/events/enqueued.json describes it. */
    static ObjectNode enqueuedEvent(String jobId, String name, String queue, JsonNode args, String key,
                                    double timeoutS, int maxAttempts, String actor) {
        ObjectNode event = JSON.createObjectNode();
        event.put("event_id", UUID.randomUUID().toString());
        event.put("job_id", jobId);
        event.put("type", "enqueued");
        event.put("occurred_at", WIRE_TIME.format(Instant.now().truncatedTo(ChronoUnit.MILLIS)));
        event.put("schema_version", 1);
        event.putNull("causation_id");
        event.put("actor", actor);
        event.put("name", name);
        event.put("queue", queue);
        event.set("args", args);
        // the event carries the job's options: the worker does not fill in its registration's
        ObjectNode options = event.putObject("options");
        options.put("max_attempts", maxAttempts);
        options.put("timeout_s", timeoutS);
        event.put("priority", "normal");
        if (key == null) {
            event.putNull("idempotency_key");
        } else {
            event.put("idempotency_key", key);
        }
        return event;
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> opts = new HashMap<>(Map.of("--queue", "default", "--args", "{}", "--count", "1",
                "--timeout-s", "30", "--max-attempts", "3", "--wait-s", "120"));
        for (int i = 0; i + 1 < argv.length; i += 2) {
            opts.put(argv[i], argv[i + 1]);
        }
        for (String required : List.of("--bootstrap", "--namespace", "--name")) {
            if (!opts.containsKey(required)) {
                System.err.println("missing " + required);
                System.exit(2);
            }
        }
        String topic = opts.get("--namespace") + ".events";
        String name = opts.get("--name");
        JsonNode args = JSON.readTree(opts.get("--args"));
        int count = Integer.parseInt(opts.get("--count"));
        String keyPrefix = opts.get("--key-prefix");
        String actor = "producer:java:" + InetAddress.getLocalHost().getHostName();

        Properties producerProps = new Properties();
        producerProps.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, opts.get("--bootstrap"));
        producerProps.put(ProducerConfig.ACKS_CONFIG, "all");
        producerProps.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
        producerProps.put(ProducerConfig.LINGER_MS_CONFIG, 5);
        Properties consumerProps = new Properties();
        consumerProps.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, opts.get("--bootstrap"));
        consumerProps.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        consumerProps.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);

        try (KafkaProducer<String, String> producer =
                     new KafkaProducer<>(producerProps, new StringSerializer(), new StringSerializer());
             KafkaConsumer<String, String> follower =
                     new KafkaConsumer<>(consumerProps, new StringDeserializer(), new StringDeserializer())) {
            int partitions = producer.partitionsFor(topic).size();
            // Follow from the current end (taken before enqueueing, so nothing of ours is missed).
            List<TopicPartition> all = new ArrayList<>();
            for (int p = 0; p < partitions; p++) {
                all.add(new TopicPartition(topic, p));
            }
            follower.assign(all);
            follower.seekToEnd(all);
            for (TopicPartition tp : all) {
                follower.position(tp);
            }

            Set<String> jobs = new LinkedHashSet<>();
            List<java.util.concurrent.Future<RecordMetadata>> acks = new ArrayList<>();
            for (int n = 0; n < count; n++) {
                String key = keyPrefix == null ? null : keyPrefix + n;
                String jobId = key == null ? UUID.randomUUID().toString() : jobIdForKey(name, key);
                ObjectNode event = enqueuedEvent(jobId, name, opts.get("--queue"), args, key,
                        Double.parseDouble(opts.get("--timeout-s")), Integer.parseInt(opts.get("--max-attempts")), actor);
                // No partition given: the default partitioner hashes the key with murmur2, which is
                // the job partition rule. Naming it explicitly would do the same:
                // new ProducerRecord<>(topic, jobPartition(jobId, partitions), jobId, json)
                acks.add(producer.send(new ProducerRecord<>(topic, jobId, JSON.writeValueAsString(event))));
                jobs.add(jobId);
            }
            int index = 0;
            for (String jobId : jobs) {
                RecordMetadata written = acks.get(index++).get();
                System.out.println("enqueued " + jobId + " " + written.partition() + " " + jobPartition(jobId, partitions));
            }

            Set<String> seen = new HashSet<>();
            Set<String> pending = new LinkedHashSet<>(jobs);
            long deadline = System.nanoTime() + (long) (Double.parseDouble(opts.get("--wait-s")) * 1e9);
            while (!pending.isEmpty() && System.nanoTime() < deadline) {
                for (ConsumerRecord<String, String> record : follower.poll(Duration.ofMillis(500))) {
                    JsonNode event = JSON.readTree(record.value());
                    if (!seen.add(event.get("event_id").asText())) {
                        continue; // a moved event comes twice: the original and its copy
                    }
                    String jobId = event.get("job_id").asText();
                    String type = event.get("type").asText();
                    if (pending.contains(jobId) && TERMINAL.contains(type)) {
                        pending.remove(jobId);
                        JsonNode result = event.get("result");
                        System.out.println("done " + jobId + " " + type + " " + (result == null ? "null" : result.toString()));
                    }
                }
            }
            if (!pending.isEmpty()) {
                System.err.println("not finished in time: " + pending);
                System.exit(1);
            }
        }
    }
}
